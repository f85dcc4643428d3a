/**
 * Core pinning for the benchmarks: on a machine with two cores or more, the
 * servers run on core 0 and the load generator on core 1 (taskset, from
 * util-linux), so the two never compete for a core and the scheduler's
 * placement does not add noise. Without taskset, nothing is pinned.
 */
import { execFileSync } from "node:child_process"
import { availableParallelism } from "node:os"

export const pinned = (() => {
  try {
    execFileSync("taskset", ["-c", "0", "true"], { stdio: "ignore" })
    return availableParallelism() >= 2
  } catch {
    return false
  }
})()

/** The command and arguments that run `file args` on `core` (taskset execs it: same pid). */
export const onCore = (core: number, file: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  pinned ? ["taskset", ["-c", String(core), file, ...args]] : [file, [...args]]

/** Moves this process to `core`. */
export const pinSelf = (core: number) => {
  if (pinned) execFileSync("taskset", ["-pc", String(core), String(process.pid)], { stdio: "ignore" })
}
