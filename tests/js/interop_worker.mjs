// A JS worker serving jobs sent by a Python client: `interop_worker.mjs ws://HOST:PORT COUNT`.
// Prints "ready" once registered, then one JSON line per job; exits after COUNT jobs.
import { run, hex, signal, PeriodicWorker } from "./harness.mjs";

run(async (url) => {
  const expected = Number(process.argv[3] ?? 1);
  const worker = await PeriodicWorker.connect(url);
  const finished = signal();
  let handled = 0;
  await worker.addFunc("py-echo", (job) => {
    const { func, name, schedAt, count, timeout } = job;
    console.log(JSON.stringify({ func, name, workload: hex(job.workload), schedAt, count, timeout }));
    if (++handled === expected) setTimeout(finished.resolve, 200); // let WORK_DONE go out first
    return new Uint8Array([...new TextEncoder().encode("js:"), ...job.workload]);
  });
  worker.work(2);
  await worker.ping();
  console.log("ready");
  await finished.promise;
  await worker.close();
});
