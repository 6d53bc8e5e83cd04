// node-postgres and postgres.js against a running Sluice, as their users
// use them.
// Run by server/tests/clients.rs with the modules scripts/infra/clients.sh
// installs:  node node_clients.js <port>
// Every check runs; exits non-zero when any failed, naming it.
const { Client } = require('pg');
const assert = require('assert');

const port = Number(process.argv[2]);
const failed = [];

async function check(name, f) {
  try {
    await f();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed.push(name);
    console.log(`FAIL ${name}\n${e.stack}`);
  }
}

(async () => {
  const c = new Client({ host: '127.0.0.1', port, user: 'sluice', password: 'sluice', database: 'sluice' });
  await c.connect();
  await check('a query and Postgres column names', async () => {
    const r = await c.query('SELECT count(*), 1 + 1 FROM (VALUES (1), (2)) AS t(x)');
    assert.deepStrictEqual(r.fields.map((f) => f.name), ['count', '?column?']);
    assert.deepStrictEqual(r.rows, [{ count: '2', '?column?': '2' }]);
  });
  await check('a typed parameter', async () => {
    const r = await c.query('SELECT $1::int + 1 AS v', [41]);
    assert.strictEqual(Number(r.rows[0].v), 42);
  });
  await check('an array parameter gives the right rows (= ANY($1))', async () => {
    const r = await c.query(
      "SELECT r FROM (VALUES ('north'), ('east'), ('west'), ('a \"quoted\" one')) AS t(r) WHERE r = ANY($1) ORDER BY r",
      [['north', 'east', 'a "quoted" one']],
    );
    assert.deepStrictEqual(r.rows.map((x) => x.r), ['a "quoted" one', 'east', 'north']);
  });
  await check('numeric and timestamp text', async () => {
    const r = await c.query("SELECT 0.1 + 0.2 AS d, TIMESTAMP '2026-11-22 13:45:07.250' AS t");
    assert.strictEqual(r.rows[0].d, '0.3');
    assert.strictEqual(r.rows[0].t.getMilliseconds(), 250);
  });
  await c.end();
  // postgres.js: tagged templates, parameters always sent with types.
  const postgres = require('postgres');
  const sql = postgres({ host: '127.0.0.1', port, user: 'sluice', password: 'sluice', database: 'sluice' });
  await check('postgres.js: a query, names and exact numerics', async () => {
    const r = await sql`SELECT count(*) AS n, 0.1 + 0.2 AS d FROM (VALUES (1), (2)) AS t(x)`;
    assert.deepStrictEqual([...r], [{ n: '2', d: '0.3' }]);
  });
  await check('postgres.js: an array parameter gives the right rows (= ANY(${array}))', async () => {
    const regions = ['north', 'east'];
    const r = await sql`SELECT r FROM (VALUES ('north'), ('east'), ('west')) AS t(r) WHERE r = ANY(${regions}) ORDER BY r`;
    assert.deepStrictEqual(r.map((x) => x.r), ['east', 'north']);
  });
  await check('postgres.js: an error has its SQLSTATE and the connection goes on', async () => {
    await assert.rejects(sql`SELECT * FROM no_such_table`, (e) => e.code === '42P01');
    const r = await sql`SELECT ${'x'} AS s`;
    assert.strictEqual(r[0].s, 'x');
  });
  await sql.end();
  console.log(`${failed.length} failed` + (failed.length ? ': ' + failed.join('; ') : ''));
  process.exit(failed.length ? 1 : 0);
})();
