/**
 * Core pinning for the benchmarks: on a machine with two cores or more, the
 * servers run on core 0 and the load generator on core 1 (taskset, from
 * util-linux), so the two never compete for a core and the scheduler's
 * placement does not add noise. Without taskset, nothing is pinned.
 *
 * `BENCH_CORE_BASE=n` shifts every core by n, so that on a machine with many
 * cores several benchmarks can run at once, each on its own pair of cores.
 */
import { execFileSync } from "node:child_process"
import { availableParallelism } from "node:os"

const coreBase = Number(process.env.BENCH_CORE_BASE ?? 0)

export const pinned = (() => {
  try {
    execFileSync("taskset", ["-c", String(coreBase), "true"], { stdio: "ignore" })
    return availableParallelism() >= coreBase + 2
  } catch {
    return false
  }
})()

/** The command and arguments that run `file args` on `core` (taskset execs it: same pid). */
export const onCore = (core: number, file: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  pinned ? ["taskset", ["-c", String(coreBase + core), file, ...args]] : [file, [...args]]

/** Moves this process to `core`. */
export const pinSelf = (core: number) => {
  if (pinned) execFileSync("taskset", ["-pc", String(coreBase + core), String(process.pid)], { stdio: "ignore" })
}
