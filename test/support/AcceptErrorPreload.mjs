// Loaded with `node --import` by test/ListenSockets.test.ts: once each listening
// socket of the process listens, it reports an accept error (`error`, as Node's
// net.Server does when accept(2) fails) on each socket still listening then,
// found through Node's public diagnostics channel.
import dc from "node:diagnostics_channel"

dc.subscribe("tracing:net.server.listen:asyncEnd", ({ server }) => {
  setTimeout(() => server.listening && server.emit("error", Object.assign(new Error("accept ENOBUFS"), { code: "ENOBUFS", syscall: "accept" })), 50)
})
