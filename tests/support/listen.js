// The kiosk driver page's way of reading a charger: a Firebase JS SDK (8.x) listener.
// Usage: node listen.js PORT NAMESPACE PATH — prints each value it sees as one JSON line.
const firebase = require('firebase');
const [port, namespace, path] = process.argv.slice(2);
const app = firebase.initializeApp({databaseURL: `http://127.0.0.1:${port}?ns=${namespace}`});
const db = app.database();
db.useEmulator('127.0.0.1', Number(port));
db.ref(path).on(
  'value',
  (snapshot) => process.stdout.write(JSON.stringify(snapshot.val()) + '\n'),
  (error) => { process.stderr.write(`listen error: ${error.message}\n`); process.exit(1); },
);
