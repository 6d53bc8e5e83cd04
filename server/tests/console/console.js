// The web console in real browsers: Debian's Chromium (driven by
// playwright-core) and Debian's Firefox ESR (driven by puppeteer-core over
// WebDriver BiDi). Log in, watch a job's rate update live, open its
// operators and their tasks, read the catalog, run SQL, watch a long
// statement's rows so far and a bounded job's progress.
// Usage: node console.js <http port> <screenshot dir> [chromium|firefox]
"use strict";

const [port, shots, which = "chromium"] = process.argv.slice(2);
const base = `http://127.0.0.1:${port}`;
let passed = 0, failed = 0;

async function check(name, fn) {
  try { await fn(); passed++; console.log(`ok   ${which}: ${name}`); }
  catch (e) { failed++; console.log(`FAIL ${which}: ${name}: ${e.message.split("\n")[0]}`); }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The few things the checks do to a page, over either driver. `waitFor`
// waits for a visible element, as a person would see it.
async function open(kind, errors) {
  if (kind === "chromium") {
    const { chromium } = require("playwright-core");
    const browser = await chromium.launch({
      executablePath: process.env.SLUICE_TEST_CHROMIUM || "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
    page.on("pageerror", (e) => errors.push(e.message));
    return {
      goto: (url) => page.goto(url),
      waitFor: (sel, timeout) => page.waitForSelector(sel, { timeout }),
      fill: (sel, v) => page.fill(sel, v),
      click: (sel) => page.click(sel),
      text: (sel) => page.textContent(sel),
      hidden: (sel) => page.isHidden(sel),
      count: async (sel) => (await page.$$(sel)).length,
      evalAll: (sel, fn) => page.$$eval(sel, fn),
      attr: (sel, name) => page.getAttribute(sel, name),
      waitUntil: (fn, timeout) => page.waitForFunction(fn, null, { timeout }),
      evaluate: (fn) => page.evaluate(fn),
      shot: (name) => page.screenshot({ path: `${shots}/${kind}-${name}.png` }),
      close: () => browser.close(),
    };
  }
  const puppeteer = require("puppeteer-core");
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.SLUICE_TEST_FIREFOX || "/usr/bin/firefox-esr",
    headless: true,
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1366, height: 800 });
  page.on("pageerror", (e) => errors.push(e.message));
  return {
    goto: (url) => page.goto(url),
    waitFor: (sel, timeout) => page.waitForSelector(sel, { visible: true, timeout }),
    fill: (sel, v) => page.$eval(sel, (el, v) => { el.value = v; el.dispatchEvent(new Event("input", { bubbles: true })); }, v),
    // Like Playwright's: waits for the element, and tries again when the
    // page replaced or moved it between finding and clicking.
    click: async (sel) => {
      for (let attempt = 1; ; attempt++) {
        await page.waitForSelector(sel, { visible: true, timeout: 30000 });
        try { return await page.click(sel); }
        catch (e) { if (attempt >= 5 || !/detached|not clickable/i.test(e.message)) throw e; await sleep(100); }
      }
    },
    text: (sel) => page.$eval(sel, (e) => e.textContent),
    hidden: (sel) => page.$eval(sel, (e) => e.hidden || getComputedStyle(e).display === "none"),
    count: async (sel) => (await page.$$(sel)).length,
    evalAll: (sel, fn) => page.$$eval(sel, fn),
    attr: (sel, name) => page.$eval(sel, (e, n) => e.getAttribute(n), name),
    waitUntil: (fn, timeout) => page.waitForFunction(fn, { timeout }),
    evaluate: (fn) => page.evaluate(fn),
    shot: (name) => page.screenshot({ path: `${shots}/${kind}-${name}.png` }),
    close: () => browser.close(),
  };
}

(async () => {
  const errors = [];
  const page = await open(which, errors);
  await page.goto(base + "/");

  await check("a wrong password is refused", async () => {
    await page.waitFor("#login:not([hidden])", 10000);
    await page.fill("#password", "wrong");
    await page.click("#login-button");
    await page.waitFor("#login-failed:not([hidden])", 10000);
    assert(await page.hidden("#tabs"), "tabs shown without a login");
  });

  await check("the right one logs in", async () => {
    await page.fill("#user", "sluice");
    await page.fill("#password", "sluice");
    await page.click("#login-button");
    await page.waitFor("#tabs:not([hidden])", 10000);
    assert((await page.text("#who")).includes("sluice"), "user not shown");
  });

  await check("the job is listed running, its rate and lag update live", async () => {
    const row = 'tr[data-job="per_auction"]';
    await page.waitFor(row, 15000);
    assert((await page.text(`${row} td:nth-child(3)`)).includes("running"), "not running");
    const rate = async () => Number(((await page.text(`${row} .rows-in`)) || "").replace("k", "e3")) || 0;
    let first = 0;
    for (let i = 0; i < 40 && first <= 0; i++) { await sleep(250); first = await rate(); }
    assert(first > 0, "no rows/s shown");
    await page.waitFor(`${row} svg.spark polyline`, 10000);
    const before = await page.attr(`${row} svg.spark polyline`, "points");
    await sleep(2500);
    const after = await page.attr(`${row} svg.spark polyline`, "points");
    assert(before !== after, "the sparkline did not move in 2.5 s");
    // The watermark lag has its own.
    await page.waitFor(`${row} td.lag svg.spark polyline`, 10000);
  });

  await check("a bounded job shows its progress", async () => {
    const bar = 'tr[data-job="nums_seen"] .progress progress';
    await page.waitFor(bar, 20000);
    let value = 0;
    for (let i = 0; i < 40 && !(value > 0); i++) { await sleep(250); value = Number(await page.attr(bar, "value")); }
    assert(value > 0 && value < 100, `progress ${value}`);
    const text = await page.text('tr[data-job="nums_seen"] .progress');
    assert(/\d+% of \d+ k rows/.test(text), text);
  });

  await check("a job's operators open on a click, and an operator's tasks", async () => {
    await page.click('tr[data-job="per_auction"] a.job');
    await page.waitFor("#operator-table", 5000);
    // The graph: every operator a box, the source feeding the rest.
    const boxes = await page.evalAll("#job-graph g.op", (gs) => gs.map((g) => g.textContent));
    assert(boxes.some((b) => b.includes("Source")) && boxes.some((b) => b.includes("Aggregate")), boxes.join(" | "));
    assert((await page.count("#job-graph path")) >= boxes.length - 1, "edges missing");
    await page.waitUntil(() => /rows\/s out/.test(document.querySelector("#job-graph").textContent), 5000);
    const text = await page.text("#operator-table");
    assert(text.includes("Aggregate") && text.includes("Source"), text.slice(0, 200));
    // The aggregate's tasks: as many rows as the box says it has tasks,
    // their rows summing to the operator's.
    const agg = await page.evalAll("#job-graph g.op", (gs) => {
      const g = gs.find((g) => g.textContent.includes("Aggregate"));
      return { id: g.dataset.op, tasks: Number(g.querySelector("text").textContent.match(/×(\d+)/)[1]) };
    });
    await page.click(`#job-graph g.op[data-op="${agg.id}"]`);
    await page.waitFor(`#task-table[data-op="${agg.id}"]`, 5000);
    const rows = await page.count("#task-table tbody tr");
    assert(rows === agg.tasks, `${rows} task rows for ${agg.tasks} tasks`);
    await page.waitUntil(() => [...document.querySelectorAll("#task-table tbody tr td:nth-child(2)")].some((td) => td.textContent !== "0"), 5000);
    await page.shot("jobs");
  });

  await check("landed data: a sink's versions, their offsets and an AS OF preview", async () => {
    await page.click('nav button[data-tab="landed"]');
    await page.waitFor('tr.commit[data-sink="landed"]', 20000);
    await page.click('tr.commit[data-sink="landed"]');
    await page.waitFor("#preview", 10000);
    const detail = await page.text("#commit-detail");
    assert(detail.includes("from_position") && detail.includes("file_paths"), detail.slice(0, 300));
    const preview = await page.text("#preview");
    assert(preview.includes("window_start") && !preview.includes("ERROR"), preview.slice(0, 300));
    await page.shot("landed");
  });

  await check("checkpoints are pushed to the page", async () => {
    await page.click('nav button[data-tab="checkpoints"]');
    await page.waitUntil(() => /completed/.test(document.querySelector("#checkpoint-table").textContent), 15000);
  });

  await check("the catalog shows the stream and the view", async () => {
    await page.click('nav button[data-tab="catalog"]');
    await page.waitUntil(() => document.querySelector("#catalog-tables").textContent.includes("per_auction"), 10000);
    const text = await page.text("#catalog-tables");
    assert(text.includes("bid") && text.includes("nexmark"), text.slice(0, 200));
    assert(text.includes("CREATE MATERIALIZED VIEW per_auction AS SELECT"), "no statements shown");
  });

  await check("SQL runs and shows rows", async () => {
    await page.click('nav button[data-tab="sql"]');
    await page.fill("#sql-text", "SELECT 40 + 2 AS answer, 'x' AS letter");
    await page.click("#sql-run");
    await page.waitFor("#sql-result table", 10000);
    const text = await page.text("#sql-result");
    assert(text.includes("answer") && text.includes("42") && text.includes("1 row"), text);
  });

  await check("a failing statement shows its SQLSTATE", async () => {
    await page.fill("#sql-text", "SELECT * FROM no_such_table");
    await page.click("#sql-run");
    await page.waitUntil(() => document.querySelector("#sql-result").textContent.includes("ERROR"), 10000);
    assert((await page.text("#sql-result")).includes("42P01"), await page.text("#sql-result"));
    await page.shot("sql");
  });

  await check("a running statement shows the rows it has produced so far", async () => {
    // 400 rows of a stream paced at 100 a second: about 4 s.
    await page.fill("#sql-text", "SELECT id FROM slow LIMIT 400");
    await page.click("#sql-run");
    await page.waitUntil(() => /[1-9][\d,]* row\(s\) so far/.test((document.querySelector("#sql-rows") || {}).textContent || ""), 15000);
    const sofar = Number((await page.text("#sql-rows")).replace(/[^\d]/g, ""));
    assert(sofar > 0 && sofar < 400, `${sofar} rows so far`);
    await page.waitUntil(() => document.querySelector("#sql-result").textContent.includes("400 row(s)"), 20000);
  });

  await check("a long statement can be cancelled", async () => {
    await page.fill("#sql-text", "SELECT count(*) FROM generate_series(1, 100000000000)");
    await page.click("#sql-run");
    await page.waitFor("#sql-cancel", 5000);
    await sleep(1000);
    await page.click("#sql-cancel");
    await page.waitUntil(() => document.querySelector("#sql-result").textContent.includes("57014"), 10000);
    // The session is fine afterwards.
    await page.fill("#sql-text", "SELECT 1 AS one");
    await page.click("#sql-run");
    await page.waitUntil(() => document.querySelector("#sql-result").textContent.includes("1 row"), 10000);
  });

  await check("SUBSCRIBE keeps a live result", async () => {
    await page.fill("#sql-text", "SUBSCRIBE TO per_auction");
    await page.click("#sql-run");
    await page.waitFor("#live-table", 10000);
    const changes = async () => Number(((await page.text("#live-status")) || "").match(/(\d+) change/)?.[1] || 0);
    let first = 0;
    for (let i = 0; i < 40 && first === 0; i++) { await sleep(250); first = await changes(); }
    assert(first > 0, "no changes arrived");
    await sleep(2000);
    const later = await changes();
    assert(later > first, `no new changes in 2 s (${first} then ${later})`);
    const head = await page.text("#live-table thead");
    assert(head.includes("auction") && head.includes("bids"), head);
    assert((await page.count("#live-table tbody tr")) > 0, "no current rows");
    await page.shot("subscribe");
    await page.click("#sql-stop");
  });

  await check("the page raised no script errors", async () => {
    assert(errors.length === 0, errors.join("; "));
  });

  await check("logging out ends the session", async () => {
    await page.click("#who button");
    await page.waitFor("#login:not([hidden])", 10000);
    const status = await page.evaluate(async () => (await fetch("/api/jobs")).status);
    assert(status === 401, `api after logout: ${status}`);
  });

  await page.close();
  console.log(`${which}: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.log(`FAIL ${which}: ${e.stack}`); process.exit(1); });
