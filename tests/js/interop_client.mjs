// A JS client talking to a Python worker for "py-upper": `interop_client.mjs ws://HOST:PORT`.
import assert from "node:assert/strict";
import { run, text, eventually, PeriodicClient } from "./harness.mjs";

run(async (url) => {
  const client = await PeriodicClient.connect(url);
  assert.equal(text(await client.runJob("py-upper", "j1", { workload: "hello" })), "HELLO");
  await client.submitJob("py-upper", "j2", { workload: "submitted", count: 4, timeout: 9 });
  await eventually(async () => (await client.status()).find((r) => r.func === "py-upper" && r.jobs === 0),
    8000, "j2 done by the Python worker");
  const row = (await client.status()).find((r) => r.func === "py-upper");
  assert.equal(row.workers, 1);
  await client.close();
});
