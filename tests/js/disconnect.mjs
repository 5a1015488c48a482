// Failures: `disconnect.mjs ws://LIVE ws://REFUSED`. Prints "ready" once a job hangs in
// the worker, then expects the server behind LIVE to be stopped: work() resolves and
// pending requests reject (a worker that does not reconnect).
import assert from "node:assert/strict";
import { run, signal, PeriodicClient, PeriodicWorker } from "./harness.mjs";

run(async (url, refused = process.argv[3]) => {
  await assert.rejects(PeriodicClient.connect(refused), /cannot register with ws:/);

  const worker = await PeriodicWorker.connect(url, { reconnect: false });
  const started = signal();
  await worker.addFunc("hang", () => { started.resolve(); return new Promise(() => {}); });
  const working = worker.work(1);
  const client = await PeriodicClient.connect(url);
  const pending = client.runJob("hang", "x", { timeout: 60 }).then(() => null, (err) => err);
  await started.promise;
  console.log("ready");

  await working; // resolves when the server goes away
  await assert.rejects(worker.ping(), /closed|error/i);
  await client.closed;
  const err = await pending;
  assert.ok(err instanceof Error && /closed|error/i.test(err.message), String(err));
});
