// Identities of an auth file (registration types 3/4): `auth.mjs ws://HOST:PORT`.
// The server's rules: client alice a-token js; worker bob b-token js.
import assert from "node:assert/strict";
import { run, text, Client, Worker } from "./harness.mjs";

run(async (url) => {
  assert.throws(() => new Client(url, { name: "alice" }), /together/);

  const worker = await Worker.connect(url, { name: "bob", token: "b-token" });
  await worker.addFunc("js", (job) => `hello ${job.text()}`);
  await assert.rejects(worker.addFunc("other", () => 1), /NO_WORKER/); // not bob's function
  worker.work(1);

  const alice = await Client.connect(url, { name: "alice", token: "a-token" });
  assert.equal(text(await alice.runJob("js", "r1", "alice")), "hello alice");
  // The older spelling of the option still works.
  const again = await Client.connect(url, { identity: { name: "alice", token: "a-token" } });
  await again.submitJob("js", "s1", "x");

  for (const opts of [{}, { name: "alice", token: "wrong" }, { name: "bob", token: "b-token" }]) {
    const refused = await Client.connect(url, opts); // registration itself is answered
    await assert.rejects(refused.submitJob("js", "nope"), /NO_WORKER/, JSON.stringify(opts));
    await refused.close();
  }
  await Promise.all([again.close(), alice.close(), worker.close()]);
});
