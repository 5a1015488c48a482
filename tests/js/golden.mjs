// The codec reproduces PROTOCOL.md §16 byte for byte.
import assert from "node:assert/strict";
import {
  run, unhex, hex, text, Cmd, ClientType, crc32, encodeFrame, encodeRegistration,
  encodeJob, decodeJob, decodeFrame,
} from "./harness.mjs";

const same = (actual, expected) => assert.equal(hex(actual), hex(unhex(expected)));
const enc = (s) => new TextEncoder().encode(s);

run(async () => {
  assert.equal(crc32(enc("123456789")), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);

  const codes = Object.values(Cmd).sort((a, b) => a - b);
  assert.deepEqual(codes, Array.from({ length: 35 }, (_, i) => i));
  assert.equal(Cmd.JOB_ASSIGNED, 33);
  assert.equal(Cmd.RECV_DATA, 31);

  same(encodeRegistration(ClientType.CLIENT), "00 52 45 51  00 00 00 01  a5 05 df 1b  01");
  same(encodeRegistration(ClientType.WORKER), "00 52 45 51  00 00 00 01  3c 0c 8e a1  02");
  same(encodeRegistration(ClientType.AUTH_CLIENT, { name: "client-a", token: "token-a" }), `
    00 52 45 51  00 00 00 20  ce e7 25 2c  03
    00 00 00 00 00 00 00 08 63 6c 69 65 6e 74 2d 61
    00 00 00 00 00 00 00 07 74 6f 6b 65 6e 2d 61`);

  same(encodeFrame(1, Cmd.PING), "00 52 45 51  00 00 00 05  a6 e5 7e f8  00 00 00 01  09");
  const job = { func: "echo", name: "a", workload: "hi", schedAt: 1700000000 };
  const jobBytes = "04 65 63 68 6f 01 61 00 00 00 02 68 69 00 00 00 00 65 53 f1 00 00";
  same(encodeJob(job), jobBytes);
  same(encodeJob({ ...job, func: enc("echo"), workload: enc("hi"), schedAt: 1700000000n }), jobBytes);
  same(encodeJob({ ...job, schedAt: 1700000000.9 }), jobBytes); // whole seconds
  same(encodeFrame(2, Cmd.SUBMIT_JOB, encodeJob(job)),
    `00 52 45 51  00 00 00 1b  1e 75 ec 1c  00 00 00 02  0d ${jobBytes}`);
  same(encodeFrame(7, Cmd.JOB_ASSIGNED), "00 52 45 51  00 00 00 05  c5 0a 71 84  00 00 00 07  21");
  same(encodeFrame(8, Cmd.WORK_DONE, new Uint8Array([4, ...enc("echo"), 1, ...enc("a"), ...enc("ok")])),
    "00 52 45 51  00 00 00 0e  c9 9f ee 4b  00 00 00 08  03  04 65 63 68 6f 01 61 6f 6b");

  // Server frames decode; the JOB_ASSIGN job re-encodes to the same bytes (v2).
  const pong = decodeFrame(unhex("00 52 45 53  00 00 00 05  3f ec 2f 42  00 00 00 01  0a"));
  assert.deepEqual([pong.msgid, pong.cmd, pong.payload.length], [1, Cmd.PONG, 0]);
  const assign = decodeFrame(unhex(`00 52 45 53  00 00 00 1f  db 92 99 e8  00 00 00 07  05
    04 65 63 68 6f 01 61 00 00 00 02 68 69 00 00 00 00 65 53 f1 00 02 00 00 02 58`));
  assert.deepEqual([assign.msgid, assign.cmd], [7, Cmd.JOB_ASSIGN]);
  const decoded = decodeJob(assign.payload);
  assert.deepEqual({ ...decoded, workload: text(decoded.workload) },
    { func: "echo", name: "a", workload: "hi", schedAt: 1700000000, count: 0, timeout: 600 });
  same(encodeJob(decoded), hex(assign.payload));
  assert.throws(() => decodeFrame(unhex("00 52 45 53  00 00 00 05  3f ec 2f 43  00 00 00 01  0a")), /CRC/);

  // Version byte is computed: count -> 1, timeout -> 2, both -> 3, non-positive -> omitted.
  const ver = (j) => encodeJob({ func: "f", name: "n", ...j })[2 + 2 + 4 + 8];
  assert.deepEqual([ver({}), ver({ count: 2 }), ver({ timeout: 5 }), ver({ count: 1, timeout: 1 }),
    ver({ count: -1, timeout: 0 })], [0, 1, 2, 3, 0]);
  const full = { func: "f", name: "ü", workload: new Uint8Array([0, 255]), schedAt: -5, count: 3, timeout: 70 };
  assert.deepEqual(decodeJob(encodeJob(full)), { ...full });
  assert.equal(hex(encodeJob({ func: "f", name: "n", count: 1, timeout: 2 }).slice(-8)), "00 00 00 01 00 00 00 02");
  assert.throws(() => encodeJob({ func: "x".repeat(256), name: "n" }), RangeError);
});
