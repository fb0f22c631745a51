// Evaluate Realtime Database rules offline with targaryen 3.1.0 (npm), the evaluator that
// firebase-server uses for its own clients. Reads {"rules": FILE, "cases": [...]} on
// stdin; each case is {"auth", "op": read|write|update, "path", "data", "value"}; prints
// one JSON line per case: {"allowed": bool, "info": "..."}.
const fs = require('fs');
const targaryen = require('targaryen');
const input = JSON.parse(fs.readFileSync(0, 'utf8'));
const rules = JSON.parse(fs.readFileSync(input.rules, 'utf8'));
for (const c of input.cases) {
  const db = targaryen.database(rules, c.data || null).as(c.auth || null);
  let result;
  if (c.op === 'read') result = db.read(c.path);
  else if (c.op === 'update') result = db.update(c.path, c.value);
  else result = db.write(c.path, c.value);
  process.stdout.write(JSON.stringify({allowed: result.allowed, info: result.info}) + '\n');
}
