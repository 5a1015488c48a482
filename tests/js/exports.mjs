// Prints the module's exports and the public methods of its classes (JSON), for the
// test that checks periodic.d.ts declares each of them.
import * as periodic from "../../trio_periodic/static/periodic.js";

const members = {};
for (const [name, value] of Object.entries(periodic)) {
  if (typeof value !== "function" || !/^[A-Z]/.test(name)) continue;
  const names = new Set();
  for (let proto = value.prototype; proto && proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    for (const key of Object.getOwnPropertyNames(proto)) {
      if (key !== "constructor" && !key.startsWith("_")) names.add(key);
    }
  }
  members[name] = [...names].sort();
}
console.log(JSON.stringify({ exports: Object.keys(periodic).sort(), members }));
