// The web console in a real Chromium (Debian's, driven by playwright-core):
// log in, watch a job's rate update live, open its operators, read the
// catalog, run SQL. Usage: node console.js <http port> <screenshot dir>
"use strict";
const { chromium } = require("playwright-core");

const [port, shots] = process.argv.slice(2);
const base = `http://127.0.0.1:${port}`;
let passed = 0, failed = 0;

async function check(name, fn) {
  try { await fn(); passed++; console.log(`ok   ${name}`); }
  catch (e) { failed++; console.log(`FAIL ${name}: ${e.message.split("\n")[0]}`); }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.SLUICE_TEST_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");

  await check("a wrong password is refused", async () => {
    await page.waitForSelector("#login:not([hidden])", { timeout: 10000 });
    await page.fill("#password", "wrong");
    await page.click("#login-button");
    await page.waitForSelector("#login-failed:not([hidden])", { timeout: 10000 });
    assert(await page.isHidden("#tabs"), "tabs shown without a login");
  });

  await check("the right one logs in", async () => {
    await page.fill("#user", "sluice");
    await page.fill("#password", "sluice");
    await page.click("#login-button");
    await page.waitForSelector("#tabs:not([hidden])", { timeout: 10000 });
    assert((await page.textContent("#who")).includes("sluice"), "user not shown");
  });

  await check("the job is listed running, its rate updates live", async () => {
    const row = 'tr[data-job="per_auction"]';
    await page.waitForSelector(row, { timeout: 15000 });
    assert((await page.textContent(`${row} td:nth-child(3)`)).includes("running"), "not running");
    const rate = async () => Number(((await page.textContent(`${row} .rows-in`)) || "").replace("k", "e3")) || 0;
    let first = 0;
    for (let i = 0; i < 40 && first <= 0; i++) { await page.waitForTimeout(250); first = await rate(); }
    assert(first > 0, "no rows/s shown");
    const spark = await page.waitForSelector(`${row} svg.spark polyline`, { timeout: 10000 });
    const before = await spark.getAttribute("points");
    await page.waitForTimeout(2500);
    const after = await (await page.$(`${row} svg.spark polyline`)).getAttribute("points");
    assert(before !== after, "the sparkline did not move in 2.5 s");
  });

  await check("a job's operators open on a click", async () => {
    await page.click('tr[data-job="per_auction"] a.job');
    await page.waitForSelector("#operator-table", { timeout: 5000 });
    // The graph: every operator a box, the source feeding the rest.
    const boxes = await page.$$eval("#job-graph g.op", (gs) => gs.map((g) => g.textContent));
    assert(boxes.some((b) => b.includes("Source")) && boxes.some((b) => b.includes("Aggregate")), boxes.join(" | "));
    assert((await page.$$("#job-graph path")).length >= boxes.length - 1, "edges missing");
    await page.waitForFunction(() => /rows\/s out/.test(document.querySelector("#job-graph").textContent), null, { timeout: 5000 });
    const text = await page.textContent("#operator-table");
    assert(text.includes("Aggregate") && text.includes("Source"), text.slice(0, 200));
    await page.screenshot({ path: `${shots}/console-jobs.png` });
  });

  await check("landed data: a sink's versions, their offsets and an AS OF preview", async () => {
    await page.click('nav button[data-tab="landed"]');
    await page.waitForSelector('tr.commit[data-sink="landed"]', { timeout: 20000 });
    await page.click('tr.commit[data-sink="landed"]');
    await page.waitForSelector("#preview", { timeout: 10000 });
    const detail = await page.textContent("#commit-detail");
    assert(detail.includes("from_position") && detail.includes("file_paths"), detail.slice(0, 300));
    const preview = await page.textContent("#preview");
    assert(preview.includes("window_start") && !preview.includes("ERROR"), preview.slice(0, 300));
    await page.screenshot({ path: `${shots}/console-landed.png` });
  });

  await check("the catalog shows the stream and the view", async () => {
    await page.click('nav button[data-tab="catalog"]');
    await page.waitForFunction(() => document.querySelector("#catalog-tables").textContent.includes("per_auction"), null, { timeout: 10000 });
    const text = await page.textContent("#catalog-tables");
    assert(text.includes("bid") && text.includes("nexmark"), text.slice(0, 200));
  });

  await check("SQL runs and shows rows", async () => {
    await page.click('nav button[data-tab="sql"]');
    await page.fill("#sql-text", "SELECT 40 + 2 AS answer, 'x' AS letter");
    await page.click("#sql-run");
    await page.waitForSelector("#sql-result table", { timeout: 10000 });
    const text = await page.textContent("#sql-result");
    assert(text.includes("answer") && text.includes("42") && text.includes("1 row"), text);
  });

  await check("a failing statement shows its SQLSTATE", async () => {
    await page.fill("#sql-text", "SELECT * FROM no_such_table");
    await page.click("#sql-run");
    await page.waitForFunction(() => document.querySelector("#sql-result").textContent.includes("ERROR"), null, { timeout: 10000 });
    assert((await page.textContent("#sql-result")).includes("42P01"), await page.textContent("#sql-result"));
    await page.screenshot({ path: `${shots}/console-sql.png` });
  });

  await check("a long statement can be cancelled", async () => {
    await page.fill("#sql-text", "SELECT count(*) FROM generate_series(1, 100000000000)");
    await page.click("#sql-run");
    await page.waitForSelector("#sql-cancel", { timeout: 5000 });
    await page.waitForTimeout(1000);
    await page.click("#sql-cancel");
    await page.waitForFunction(() => document.querySelector("#sql-result").textContent.includes("57014"), null, { timeout: 10000 });
    // The session is fine afterwards.
    await page.fill("#sql-text", "SELECT 1 AS one");
    await page.click("#sql-run");
    await page.waitForFunction(() => document.querySelector("#sql-result").textContent.includes("1 row"), null, { timeout: 10000 });
  });

  await check("SUBSCRIBE keeps a live result", async () => {
    await page.fill("#sql-text", "SUBSCRIBE TO per_auction");
    await page.click("#sql-run");
    await page.waitForSelector("#live-table", { timeout: 10000 });
    const changes = async () => Number(((await page.textContent("#sql-result p")) || "").match(/(\d+) change/)?.[1] || 0);
    let first = 0;
    for (let i = 0; i < 40 && first === 0; i++) { await page.waitForTimeout(250); first = await changes(); }
    assert(first > 0, "no changes arrived");
    await page.waitForTimeout(2000);
    const later = await changes();
    assert(later > first, `no new changes in 2 s (${first} then ${later})`);
    const head = await page.textContent("#live-table thead");
    assert(head.includes("auction") && head.includes("bids"), head);
    assert((await page.$$("#live-table tbody tr")).length > 0, "no current rows");
    await page.screenshot({ path: `${shots}/console-subscribe.png` });
    await page.click("#sql-stop");
  });

  await check("the page raised no script errors", async () => {
    assert(errors.length === 0, errors.join("; "));
  });

  await check("logging out ends the session", async () => {
    await page.click("#who button");
    await page.waitForSelector("#login:not([hidden])", { timeout: 10000 });
    const status = await page.evaluate(async () => (await fetch("/api/jobs")).status);
    assert(status === 401, `api after logout: ${status}`);
  });

  await browser.close();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.log(`FAIL ${e.stack}`); process.exit(1); });
