// Shared helpers for the periodic.js node scripts run by tests/test_js_client.py.
export * from "../../trio_periodic/static/periodic.js";

/** Exit with status 2 if the script is still running after `seconds`. */
export function deadline(seconds) {
  const timer = setTimeout(() => {
    console.error(`timed out after ${seconds} s`);
    process.exit(2);
  }, seconds * 1000);
  timer.unref();
}

/** Run `main`, exit 0 on success and 1 (with the stack) on failure. */
export async function run(main, seconds = 25) {
  deadline(seconds);
  try {
    await main(process.argv[2]);
    console.log("ok");
    process.exit(0);
  } catch (err) {
    console.error(err?.stack ?? err);
    process.exit(1);
  }
}

/** Bytes from a hex dump with arbitrary whitespace. */
export const unhex = (text) => Uint8Array.from(text.trim().split(/\s+/), (h) => parseInt(h, 16));
export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
export const text = (bytes) => new TextDecoder().decode(bytes);
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `fn` until it returns a truthy value (or fail after `ms`). */
export async function eventually(fn, ms = 8000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > end) throw new Error(`${what} not reached within ${ms} ms`);
    await sleep(50);
  }
}

/** A promise plus its resolve function. */
export function signal() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}
