/**
 * The scheduler of the request fibers (admission, the pipeline, the model).
 */
import { Layer, Scheduler } from "effect"

/**
 * Where request fibers (admission, the pipeline's work, the model) continue after a timer or a
 * freed slot: on a microtask, not Effect's default `setImmediate`. The default
 * waits for a whole poll phase of the event loop at each such step, which
 * under load measured 0.6–0.9 ms between one request freeing a slot and the
 * next starting (0.14 ms with microtasks), and 0.3 ms more after each model
 * timer: 92–93 % of the theoretical throughput with slots always busy
 * (benchmark scenario 2), 97 % with microtasks. The catch, that such fibers
 * never yield to I/O, does not apply: none of them does CPU-heavy work.
 */
export const RequestScheduler = Layer.succeed(Scheduler.Scheduler, new Scheduler.MixedScheduler("sync"))
