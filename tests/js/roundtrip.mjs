// A JS worker and a JS client against a live server: usage `roundtrip.mjs ws://HOST:PORT`.
import assert from "node:assert/strict";
import { run, text, signal, eventually, PeriodicClient, PeriodicWorker } from "./harness.mjs";

run(async (url) => {
  const worker = await PeriodicWorker.connect(url);
  const client = await PeriodicClient.connect(url);
  assert.equal(typeof worker.connId, "number");
  assert.equal(await client.ping(), true);
  assert.equal(await worker.ping(), true);

  // A returned value means done(value); data() chunks are accepted.
  await worker.addFunc("echo", async (job) => {
    await job.data("partial");
    return `echo:${job.text()}:${job.count}:${job.timeout}`;
  });
  // Bytes in, bytes out, explicit done().
  await worker.addFunc("bytes", async (job) => { await job.done(job.workload.slice().reverse()); });
  const seen = [];
  const stored = signal();
  await worker.addFunc("store", (job) => {
    seen.push({ name: job.name, workload: job.text(), schedAt: job.schedAt });
    stored.resolve();
  });
  // schedLater(0, 1) re-runs the job at once with count + 1.
  const counts = [];
  const later = signal();
  await worker.addFunc("later", async (job) => {
    counts.push(job.count);
    if (job.count === 0) return job.schedLater(0, 1);
    later.resolve();
    return "finished";
  });
  // A thrown error means fail(): the server retries the job.
  let attempts = 0;
  const retried = signal();
  const errors = [];
  worker.onError = (err) => errors.push(err.message);
  await worker.addFunc("flaky", (job) => {
    attempts += 1;
    if (attempts === 1) throw new Error("first attempt fails");
    retried.resolve(job.name);
  });
  const working = worker.work(3);

  assert.equal(text(await client.runJob("echo", "r1", { workload: "hi" })), "echo:hi:0:10");
  assert.equal(text(await client.runJob("echo", "r2", { workload: "é", timeout: 30 })), "echo:é:0:30");
  const reversed = await client.runJob("bytes", "b1", { workload: new Uint8Array([1, 2, 255]) });
  assert.ok(reversed instanceof Uint8Array);
  assert.deepEqual(Array.from(reversed), [255, 2, 1]);
  await assert.rejects(client.runJob("nobody", "x"), /no worker/);

  const before = Math.floor(Date.now() / 1000);
  await client.submitJob("store", "s1", { workload: "payload" });
  await stored.promise;
  assert.equal(seen.length, 1);
  assert.equal(seen[0].name, "s1");
  assert.equal(seen[0].workload, "payload");
  assert.ok(seen[0].schedAt >= before - 1, `schedAt ${seen[0].schedAt} filled in with now`);

  await client.submitJob("later", "l1");
  await later.promise;
  assert.deepEqual(counts, [0, 1]);

  await client.submitJob("flaky", "f1");
  assert.equal(await retried.promise, "f1");
  assert.equal(attempts, 2);
  assert.deepEqual(errors, ["first attempt fails"]);

  // Status rows: a job in the future for a func without workers.
  const future = Math.floor(Date.now() / 1000) + 3600;
  await client.submitJob("idle", "i1", { schedAt: future, workload: "w" });
  await client.submitJob("idle", "i2", { schedAt: future + 10 });
  const rows = await eventually(async () => {
    const all = await client.status();
    return all.find((r) => r.func === "idle" && r.jobs === 2) && all;
  }, 8000, "status shows idle jobs");
  assert.deepEqual(rows.find((r) => r.func === "idle"),
    { func: "idle", workers: 0, jobs: 2, processing: 0, locked: 0, schedAt: future });
  const echo = rows.find((r) => r.func === "echo");
  assert.equal(echo.workers, 1);
  assert.equal(echo.jobs, 0);
  assert.deepEqual(rows.map((r) => r.func), [...rows.map((r) => r.func)].sort());

  await client.removeJob("idle", "i1");
  await client.removeJob("idle", "i2");
  await eventually(async () => (await client.status()).find((r) => r.func === "idle")?.jobs === 0,
    8000, "idle jobs removed");
  await client.dropFunc("idle");
  await eventually(async () => !(await client.status()).some((r) => r.func === "idle"), 8000, "idle dropped");

  // removeFunc: the worker no longer counts for the func.
  await worker.removeFunc("bytes");
  await assert.rejects(client.runJob("bytes", "b2"), /no worker/);

  // Broadcast: every worker registered for the func gets the job.
  const second = await PeriodicWorker.connect(url);
  const got = [];
  const both = signal();
  const onBroadcast = (who) => (job) => { got.push(`${who}:${job.name}`); if (got.length === 2) both.resolve(); };
  await worker.broadcast("bc", onBroadcast("w1"));
  await second.broadcast("bc", onBroadcast("w2"));
  second.work(1);
  // Scheduled a little later so that both workers' grab slots are registered by then.
  await client.submitJob("bc", "all", { schedAt: Math.floor(Date.now() / 1000) + 2 });
  await both.promise;
  assert.deepEqual(got.sort(), ["w1:all", "w2:all"]);

  await second.close();
  await client.close();
  await assert.rejects(client.ping(), /closed/);
  await worker.close();
  await working; // work() resolves once the worker is closed
});
