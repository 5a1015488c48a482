// The names shared with the Python library: `api.mjs ws://HOST:PORT`.
import assert from "node:assert/strict";
import {
  run, text, signal, eventually, sleep, Client, Worker, Job, PeriodicClient, PeriodicWorker,
  PeriodicJob,
} from "./harness.mjs";

run(async (url) => {
  assert.equal(Client, PeriodicClient);
  assert.equal(Worker, PeriodicWorker);
  assert.equal(Job, PeriodicJob);

  // Python style: build, register, then work() connects.
  const worker = new Worker(url, { pingInterval: 0 });
  assert.equal(worker.connected, false);
  const seen = [];
  worker.func("json")((job) => { seen.push(job.json()); return { ok: true }; });
  await worker.addFunc("upper", (job) => job.text().toUpperCase());
  const working = worker.work(2);
  await eventually(() => worker.connected, 8000, "connected by work()");
  const client = await Client.connect(url);

  // Positional workload, as submit_job(func, name, workload) / run_job.
  assert.equal(text(await client.runJob("upper", "u1", "abc")), "ABC");
  assert.equal(text(await client.runJob("upper", "u2", new Uint8Array([104, 105]), { timeout: 5 })), "HI");
  assert.equal(text(await client.runJob("json", "j1", JSON.stringify({ n: 1 }))), '{"ok":true}');
  assert.deepEqual(seen, [{ n: 1 }]);

  // `later` is seconds from now, as in Python.
  const before = Math.floor(Date.now() / 1000);
  await client.submitJob("idle", "l1", "w", { later: 3600 });
  const row = (await client.status()).find((r) => r.func === "idle");
  assert.ok(row.schedAt >= before + 3599 && row.schedAt <= before + 3601, String(row.schedAt));
  await client.removeJob("idle", "l1");

  // check: failed / removed answers reject instead of coming back as results.
  await worker.addFunc("failing", () => { throw new Error("no"); });
  worker.onError = () => {};
  assert.equal(text(await client.runJob("failing", "f1")), "failed");
  await assert.rejects(client.runJob("failing", "f2", "", { check: true }), /failing\/f2 failed/);

  // configGet / configSet.
  const old = await client.configGet("timeout");
  await client.configSet("timeout", old + 7);
  assert.equal(await client.configGet("timeout"), old + 7);
  await client.configSet("timeout", old);

  // Locks: addFunc(..., {lock, lockCount}) runs one job at a time.
  let inside = 0;
  let most = 0;
  const both = signal();
  let finished = 0;
  await worker.addFunc("locked", async () => {
    inside += 1; most = Math.max(most, inside);
    await sleep(150);
    inside -= 1;
    if (++finished === 2) both.resolve();
  }, { lock: "one", lockCount: 1 });
  await client.submitJob("locked", "a");
  await client.submitJob("locked", "b");
  await both.promise;
  assert.equal(most, 1);

  // stop(): no new jobs; work() resolves once the running ones are reported.
  const release = signal();
  const started = signal();
  await worker.addFunc("slow", async () => { started.resolve(); await release.promise; return "late"; });
  const result = client.runJob("slow", "s1");
  await started.promise;
  const stopping = worker.stop();
  release.resolve();
  assert.equal(text(await result), "late");
  await stopping;
  await working;
  assert.equal(worker.connected, false);
  await client.close();
});
