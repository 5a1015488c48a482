// A worker outlives its server: `reconnect.mjs ws://HOST:PORT`. Prints "ready" once it
// works, "job NAME" per job, "lost" when the session drops; the test restarts the server
// on the same port and submits "after", which the same worker object must run.
import assert from "node:assert/strict";
import { run, eventually, Worker } from "./harness.mjs";

run(async (url) => {
  const worker = new Worker(url, { maxBackoff: 200, pingInterval: 0 });
  let lost = 0;
  let back = 0;
  worker.onDisconnect = () => { lost += 1; console.log("lost"); };
  worker.onReconnect = () => { back += 1; };
  const seen = [];
  worker.addFunc("rc", (job) => { seen.push(job.name); console.log(`job ${job.name}`); });
  const working = worker.work(2);
  await eventually(() => worker.connected, 8000, "first session");
  assert.equal(worker.sessions, 1);
  console.log("ready");
  await eventually(() => seen.includes("after"), 25000, "job after the restart");
  assert.deepEqual(seen, ["before", "after"]);
  assert.equal(lost, 1);
  assert.equal(back, 1);
  assert.ok(worker.sessions >= 2);
  await worker.close();
  await working; // work() resolves once the worker is closed for good
}, 40);
