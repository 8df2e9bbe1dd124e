// The dashboard's browser tests: headless Chromium (Debian's `/usr/bin/chromium`, driven by
// `playwright-core`, which downloads no browser) signs in to the dashboard with a person's
// client certificate (`<certs>/<role>.p12`, one browser context per person) and goes through
// the scenarios of a plan. Run by tests/python/test_dashboard.py, which starts the stack,
// seeds each scenario through the gRPC APIs, and checks what this script saw against them:
//
//   node dashboard.mjs <plan.json>
//
// The plan:
//
//   {
//     "origin": "https://127.0.0.1:PORT",   the dashboard
//     "certs": "/tmp/...",                  the people's <role>.p12 (password tandem-dev)
//     "chromium": "/usr/bin/chromium",
//     "screenshots": "/.../target/screenshots/dashboard",
//     "dumps": "/tmp/.../dumps",
//     "scenarios": [{"name": "payment", ...}, ...]   see SCENARIOS below for each one's fields
//   }
//
// Every page visited is saved twice: a full-page screenshot, `<scenario>-<role>-<label>.png` in
// `screenshots`, and its HTML as the browser holds it in `dumps`. Every response of the
// dashboard's origin (pages, the script, fetched results, finished event streams) is saved in
// `dumps/responses/` too, once per distinct body, and the event stream of each payment page
// opened, read whole, in `dumps`: so that the tests can scan everything the dashboard sent a
// browser for card numbers.
//
// Prints one JSON object: `visits` (each page visited, its status and files), `responses` (how
// many bodies were saved) and `results` (what each scenario read, by scenario name). On failure
// it still prints what it has, with `error`, says what went wrong on stderr, saves a screenshot
// of the pages open at the time (`...-failure.png`) and exits 1.

import { createHash, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";

import { chromium } from "playwright-core";

// The password of every dev PKCS#12 file `tandemctl dev` writes.
const PKCS12_PASSWORD = "tandem-dev";
// How long one step (a navigation, a click, an element to appear) may take.
const STEP_TIMEOUT_MS = 15_000;
// How long a running payment may take to settle on its page, and the handshake to wait.
const SETTLE_TIMEOUT_MS = 30_000;
const HANDSHAKE_TIMEOUT_MS = 60_000;
const POLL_MS = 50;
// A cross-site page, served by the test itself (never fetched from the network).
const EVIL_ORIGIN = "https://evil.example";

const planPath = process.argv[2];
if (!planPath) {
  console.error("usage: node dashboard.mjs <plan.json>");
  process.exit(2);
}
const plan = JSON.parse(await readFile(planPath, "utf8"));
for (const field of ["origin", "certs", "chromium", "screenshots", "dumps", "scenarios"]) {
  if (!plan[field]) throw new Error(`${planPath}: the plan has no "${field}"`);
}
if (!existsSync(plan.chromium)) {
  console.error(
    `${plan.chromium} is missing: install Debian's chromium (apt-get install -y chromium)`,
  );
  process.exit(1);
}

const visits = [];
const results = {};
// Bodies saved from the dashboard's responses, by SHA-256, so that the script the pages load
// again and again is saved once.
const savedBodies = new Set();
// Pending saves of response bodies: awaited before a context closes.
const pendingSaves = [];
// Each open page and what its screenshot on failure is called.
const openPages = new Set();
const fileNames = new Set();
let responseCount = 0;

await mkdir(plan.screenshots, { recursive: true });
await mkdir(join(plan.dumps, "responses"), { recursive: true });
// Earlier runs' files stay: this run's names go on from them.
for (const file of await readdir(plan.screenshots)) fileNames.add(file.replace(/\.png$/, ""));
let responseSequence = (await readdir(join(plan.dumps, "responses"))).length;

// --- Browser, people and pages ----------------------------------------------------------------

// A browser context signed in as `role`: its PKCS#12 identity for the dashboard's origin. The
// dev CA is not in Chromium's store, hence ignoreHTTPSErrors (the client certificate still
// decides who is served). `role: null` is a browser without any certificate.
async function signIn(browser, scenario, role) {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    clientCertificates: role
      ? [
          {
            origin: plan.origin,
            pfxPath: join(plan.certs, `${role}.p12`),
            passphrase: PKCS12_PASSWORD,
          },
        ]
      : [],
    viewport: { width: 1280, height: 900 },
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const who = role ?? "nobody";
  context.on("requestfinished", (request) =>
    pendingSaves.push(saveResponse(`${scenario}-${who}`, request)),
  );
  const page = await context.newPage();
  const entry = { page, name: `${scenario}-${who}` };
  openPages.add(entry);
  page.on("close", () => openPages.delete(entry));
  const problems = [];
  page.on("console", (message) => {
    if (message.type() === "error")
      problems.push(`console: ${message.text()} (${message.location().url})`);
  });
  page.on("pageerror", (error) => problems.push(`uncaught: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} ${response.url()}`);
  });
  return { context, page, scenario, role: who, problems };
}

// Closes the person's browser context once the bodies of its responses are saved (a closed
// context has none left to read).
async function signOut(person) {
  await drainSaves();
  await person.context.close();
}

async function drainSaves() {
  while (pendingSaves.length > 0) await Promise.all(pendingSaves.splice(0));
}

// Saves the body of a finished response of the dashboard's origin, once per distinct body, as
// `<sequence>-<scenario>-<role>-<path>.<type>`.
async function saveResponse(prefix, request) {
  if (!request.url().startsWith(`${plan.origin}/`)) return;
  const response = await request.response().catch(() => null);
  if (!response) return;
  // A redirect has no body to read.
  const body = await response.body().catch(() => null);
  if (body === null) return;
  const digest = createHash("sha256").update(body).digest("hex");
  if (savedBodies.has(digest)) return;
  savedBodies.add(digest);
  responseCount += 1;
  responseSequence += 1;
  const type = response.headers()["content-type"] ?? "";
  const extension = type.includes("html")
    ? "html"
    : type.includes("javascript")
      ? "js"
      : type.includes("event-stream")
        ? "sse.txt"
        : "txt";
  const sequence = String(responseSequence).padStart(4, "0");
  const name = `${sequence}-${prefix}-${slug(new URL(request.url()).pathname)}.${extension}`;
  await writeFile(join(plan.dumps, "responses", name), body);
}

// A file-name-safe form of `text`.
function slug(text) {
  return (
    text
      .replace(/^\/+/, "")
      .replace(/[^A-Za-z0-9_.]+/g, "-")
      .replace(/-+$/, "") || "root"
  );
}

// A name no earlier visit of this run took.
function uniqueName(base) {
  let name = base;
  for (let n = 2; fileNames.has(name); n += 1) name = `${base}-${n}`;
  fileNames.add(name);
  return name;
}

// Goes to `path` as the person and saves the page; returns the HTTP status (null when no page
// came, as for a browser without a certificate) and the navigation's error, if any.
async function visit(person, path, label) {
  let status = null;
  let error = null;
  try {
    const response = await person.page.goto(`${plan.origin}${path}`, { waitUntil: "load" });
    status = response ? response.status() : null;
  } catch (thrown) {
    error = thrown.message.split("\n")[0];
  }
  await snap(person, label, { path, status, error });
  return { status, error };
}

// Saves what the person's page shows now: a full-page screenshot and its HTML.
async function snap(person, label, extra = {}) {
  const name = uniqueName(`${person.scenario}-${person.role}-${label}`);
  const screenshot = join(plan.screenshots, `${name}.png`);
  const html = join(plan.dumps, `${name}.html`);
  await person.page.screenshot({ path: screenshot, fullPage: true });
  await writeFile(html, await person.page.content());
  visits.push({
    scenario: person.scenario,
    role: person.role,
    label,
    url: person.page.url(),
    screenshot,
    html,
    ...extra,
  });
}

// The text of the first element matching `selector` on the page, trimmed, or null.
async function textOf(page, selector) {
  const locator = page.locator(selector).first();
  return (await locator.count()) > 0 ? ((await locator.textContent()) ?? "").trim() : null;
}

// What a person may do on the page: the forms it offers (their class and action) and the
// labels of its buttons.
async function offered(page) {
  return page.evaluate(() => ({
    forms: [...document.querySelectorAll("main form[method='post']")].map((form) => ({
      class: form.className,
      action: form.getAttribute("action"),
    })),
    buttons: [...document.querySelectorAll("main button")].map((button) =>
      button.textContent.trim(),
    ),
  }));
}

// The fields a form would post: its inputs' names and values (the hidden token and request id
// included).
async function formFields(form) {
  return {
    action: await form.getAttribute("action"),
    fields: await form.evaluate((element) =>
      Object.fromEntries(
        [...element.querySelectorAll("input[name]")].map((input) => [input.name, input.value]),
      ),
    ),
  };
}

// Posts `fields` to `action` from the person's page with the page's own fetch (the browser
// sets the Origin header, as for any form of the page); returns the status and the answer's
// text.
async function postFromPage(person, action, fields) {
  return person.page.evaluate(
    async ({ action, fields }) => {
      const response = await fetch(action, {
        method: "POST",
        body: new URLSearchParams(fields),
        redirect: "manual",
      });
      const text = await response.text();
      const alert = new DOMParser()
        .parseFromString(text, "text/html")
        .querySelector("[role=alert]");
      return { status: response.status, alert: alert ? alert.textContent.trim() : text.trim() };
    },
    { action, fields },
  );
}

// The rows of the payments table on the page: each payment's id and state.
async function paymentRows(page) {
  return page.$$eval("#results table.payments tr[data-payment-id]", (rows) =>
    rows.map((row) => ({ id: row.dataset.paymentId, state: row.cells[2].textContent.trim() })),
  );
}

// The payment page's overview and split, as shown.
async function paymentShown(page) {
  return page.evaluate(() => {
    const text = (root, selector) => root.querySelector(selector)?.textContent.trim() ?? null;
    const live = document.querySelector("#live");
    return {
      title: document.title,
      state: text(live, "dd[data-field=state]"),
      captured: text(live, "dd[data-field=captured]"),
      legs: [...live.querySelectorAll("table.legs tr[data-leg-index]")].map((row) => ({
        index: Number(row.dataset.legIndex),
        last4: text(row, "td[data-field=last4]"),
        amount: text(row, "td[data-field=amount]"),
        // The fifth cell: what the card was charged, with the rate when converted.
        charged: row.cells[4].textContent.trim(),
        captured: text(row, "td[data-field=captured]"),
        state: text(row, "td[data-field=state]"),
      })),
      attempts: [...live.querySelectorAll("ol.attempts li[data-attempt]")].map((item) => ({
        number: Number(item.dataset.attempt),
        outcome: item.dataset.outcome,
      })),
      ledgerRows: live.querySelectorAll("table.ledger tbody tr").length,
      events: [...live.querySelectorAll("ol.events li[data-sequence]")].map((item) =>
        Number(item.dataset.sequence),
      ),
      deliveries: live.querySelectorAll("table.deliveries tbody tr").length,
      liveState: live.dataset.liveState ?? null,
      watch: live.dataset.watch ?? null,
    };
  });
}

// Submits `form` with `button` and waits for where it leads: the page that says `notice` (the
// redirect after a change), or else the refusal at the form's own action, which fails the
// scenario with the page's reason.
async function submit(person, form, button, notice) {
  const action = await form.getAttribute("action");
  await button.click();
  await person.page.waitForURL(
    (url) => url.searchParams.get("notice") === notice || url.pathname === action,
  );
  if (new URL(person.page.url()).pathname === action) {
    await snap(person, "refused");
    const reason = await textOf(person.page, "[role=alert]");
    throw new Error(`${person.role}'s form was refused at ${action}: ${reason}`);
  }
}

// A payment's event stream from its start, read whole as the person (the stream of a settled
// payment ends; a page's EventSource closes it before its body can be saved) and saved in
// `dumps`.
async function readEvents(person, id) {
  const response = await person.context.request.get(`${plan.origin}/payments/${id}/events?after=0`);
  const text = await response.text();
  const name = uniqueName(`${person.scenario}-${person.role}-events-${id}`);
  await writeFile(join(plan.dumps, `${name}.sse.txt`), text);
  return { status: response.status(), text };
}

// Counts the documents the page loads from now on: a page changed without a reload loads none
// (history.pushState and going back to such an entry load nothing).
function countNavigations(page) {
  const counter = { count: 0 };
  page.on("load", () => {
    counter.count += 1;
  });
  return counter;
}

async function waitForFile(path, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return readFile(path, "utf8");
}

// --- Scenarios --------------------------------------------------------------------------------

// A payment's page as `role` (default reader): its overview, split, attempts, ledger and
// events; and its event stream read whole (a settled payment's ends with `end`).
async function payment(browser, { payment_id: id, role = "reader" }) {
  const person = await signIn(browser, "payment", role);
  const { status } = await visit(person, `/payments/${id}`, `payment-${id}`);
  const shown = await paymentShown(person.page);
  const stream = await readEvents(person, id);
  const result = {
    status,
    shown,
    events: stream.text,
    eventsStatus: stream.status,
    problems: person.problems,
  };
  await signOut(person);
  return result;
}

// The spend page of a billing account over [from, until]: what each chart drew (its
// `data-totals`, once `data-drawn`) and the totals table.
async function spend(browser, { billing_account_id: account, from, until, role = "treasury" }) {
  const person = await signIn(browser, "spend", role);
  const query = new URLSearchParams({ billing_account_id: account, from, until });
  const { status } = await visit(person, `/spend?${query}`, "spend");
  // The script draws every chart whose table has amounts (one with none stays a table).
  await person.page.waitForFunction(() =>
    [...document.querySelectorAll("figure.chart[data-chart=bar]")]
      .filter((figure) => figure.querySelector("td[data-minor-units]"))
      .every((figure) => figure.dataset.drawn === "true"),
  );
  await snap(person, "spend-drawn");
  const shown = await person.page.evaluate(() => ({
    account: document.querySelector("select[name=billing_account_id]")?.value ?? null,
    charts: Object.fromEntries(
      [...document.querySelectorAll("figure.chart[data-chart=bar]")].map((figure) => [
        figure.id,
        {
          drawn: figure.dataset.drawn === "true",
          totals: JSON.parse(figure.dataset.totals ?? "null"),
          canvas: figure.querySelector("canvas[role=img]") !== null,
          rows: figure.querySelectorAll("tbody tr").length,
        },
      ]),
    ),
    nothing: document.querySelector("#spend-totals td[colspan]")?.textContent.trim() ?? null,
    totals: [...document.querySelectorAll("#spend-totals tbody tr")]
      .filter((row) => row.querySelector("th"))
      .map((row) => ({
        currency: row.querySelector("th").textContent.trim(),
        net: Number(row.cells[1].dataset.minorUnits),
        captured: Number(row.cells[2].dataset.minorUnits),
        refunded: Number(row.cells[3].dataset.minorUnits),
      })),
  }));
  const result = { status, ...shown, problems: person.problems };
  await signOut(person);
  return result;
}

// Four eyes in the browser: the treasury proposes the adjustment of a discrepancy from the
// reconciliation page, then the approver approves it there.
async function reconcile(browser, { discrepancy_id: id, reason }) {
  const row = (page) => page.locator(`tr[data-discrepancy-id="${id}"]`);
  const rowState = (page) => textOf(page, `tr[data-discrepancy-id="${id}"] td[data-field=state]`);

  const treasury = await signIn(browser, "reconcile", "treasury");
  await visit(treasury, "/reconciliation", "reconciliation");
  const proposing = { state: await rowState(treasury.page), offered: await offered(treasury.page) };
  const propose = row(treasury.page).locator("form.propose");
  const button = (await propose.locator("button[type=submit]").textContent()).trim();
  await propose.locator("input[name=reason]").fill(reason);
  await submit(treasury, propose, propose.locator("button[type=submit]"), "proposed");
  await snap(treasury, "reconciliation-proposed");
  const proposed = {
    url: treasury.page.url(),
    notice: await textOf(treasury.page, "p[role=status]"),
    state: await rowState(treasury.page),
    forms: await row(treasury.page).locator("form").count(),
  };
  await signOut(treasury);

  const approver = await signIn(browser, "reconcile", "approver");
  await visit(approver, "/reconciliation", "reconciliation");
  const approving = { state: await rowState(approver.page), offered: await offered(approver.page) };
  const approve = row(approver.page).locator("form.approve");
  await submit(approver, approve, approve.locator("button[type=submit]"), "approved");
  await snap(approver, "reconciliation-approved");
  const approved = {
    url: approver.page.url(),
    notice: await textOf(approver.page, "p[role=status]"),
    state: await rowState(approver.page),
    forms: await row(approver.page).locator("form").count(),
  };
  const result = {
    button,
    proposing,
    proposed,
    approving,
    approved,
    problems: [...treasury.problems, ...approver.problems],
  };
  await signOut(approver);
  return result;
}

// The reviewer approves a payment from the review queue, then follows it on its page until it
// is captured.
async function review(browser, { payment_id: id, note }) {
  const reviewer = await signIn(browser, "review", "reviewer");
  await visit(reviewer, "/review", "review");
  const form = reviewer.page.locator(`tr[data-payment-id="${id}"] form.review`);
  const queued = { rows: await reviewer.page.locator("table.review tr[data-payment-id]").count() };
  await form.locator("input[name=note]").fill(note);
  await submit(reviewer, form, form.locator('button[name=verdict][value="APPROVE"]'), "reviewed");
  await snap(reviewer, "review-reviewed");
  const reviewed = {
    url: reviewer.page.url(),
    notice: await textOf(reviewer.page, "p[role=status]"),
    stillQueued: await reviewer.page.locator(`tr[data-payment-id="${id}"]`).count(),
  };
  await visit(reviewer, `/payments/${id}`, `payment-${id}`);
  await reviewer.page.waitForFunction(
    () => document.querySelector("#live dd[data-field=state]")?.textContent.trim() === "SUCCEEDED",
    null,
    { timeout: SETTLE_TIMEOUT_MS },
  );
  await snap(reviewer, `payment-${id}-succeeded`);
  const result = {
    queued,
    reviewed,
    shown: await paymentShown(reviewer.page),
    problems: reviewer.problems,
  };
  await signOut(reviewer);
  return result;
}

// A reader is offered no change, and cannot post one anyway: neither without a token nor with a
// token taken from the page of a person who may make the change.
async function reader(
  browser,
  { open_discrepancy_id: open, waiting_discrepancy_id: waiting, payment_id: held },
) {
  // The forms as the people who may post them see them.
  const forms = [];
  for (const [role, path, selector, fill] of [
    [
      "treasury",
      "/reconciliation",
      `tr[data-discrepancy-id="${open}"] form.propose`,
      { reason: "a reader's try" },
    ],
    ["approver", "/reconciliation", `tr[data-discrepancy-id="${waiting}"] form.approve`, {}],
    [
      "reviewer",
      "/review",
      `tr[data-payment-id="${held}"] form.review`,
      { note: "a reader's try", verdict: "APPROVE" },
    ],
  ]) {
    const person = await signIn(browser, "reader", role);
    await visit(person, path, slug(path));
    const form = await formFields(person.page.locator(selector));
    forms.push({ role, action: form.action, fields: { ...form.fields, ...fill } });
    await signOut(person);
  }

  const person = await signIn(browser, "reader", "reader");
  const pages = {};
  for (const path of ["/reconciliation", "/review"]) {
    const { status } = await visit(person, path, slug(path));
    pages[path] = {
      status,
      ...(await offered(person.page)),
      discrepancies: await person.page.$$eval("tr[data-discrepancy-id]", (rows) =>
        rows.map((row) => ({
          id: row.dataset.discrepancyId,
          state: row.querySelector("td[data-field=state]").textContent.trim(),
        })),
      ),
      payments: await person.page.$$eval("tr[data-payment-id]", (rows) =>
        rows.map((row) => row.dataset.paymentId),
      ),
    };
  }
  const posts = [];
  for (const form of forms) {
    const { csrf, ...withoutToken } = form.fields;
    posts.push({
      from: form.role,
      action: form.action,
      token: "none",
      ...(await postFromPage(person, form.action, withoutToken)),
    });
    posts.push({
      from: form.role,
      action: form.action,
      token: "copied",
      ...(await postFromPage(person, form.action, form.fields)),
    });
  }
  // And once as a form the reader builds in the page and submits, to see the page it gets.
  const [first] = forms;
  const navigation = person.page.waitForNavigation();
  await person.page.evaluate(({ action, fields }) => {
    const form = document.createElement("form");
    form.method = "post";
    form.action = action;
    for (const [name, value] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.append(input);
    }
    document.body.append(form);
    form.submit();
  }, first);
  const submitted = await navigation;
  await snap(person, "forged-form", { status: submitted?.status() ?? null });
  const forged = {
    status: submitted?.status() ?? null,
    alert: await textOf(person.page, "[role=alert]"),
  };
  const result = { pages, posts, forged, problems: person.problems };
  await signOut(person);
  return result;
}

// A running payment's page follows it without a reload: the browser opens the payments page,
// says it is ready (`ready_file`), waits for the test to start a slow payment (its id in
// `go_file`), opens its page and watches the state change until it settles.
async function live(browser, { ready_file: readyFile, go_file: goFile, role = "treasury" }) {
  const person = await signIn(browser, "live", role);
  // Every state the page shows, in order, from its first parse on; and the live state.
  await person.page.addInitScript(() => {
    window.__states = [];
    window.__liveStates = [];
    const record = () => {
      const live = document.getElementById("live");
      const state = live?.querySelector("dd[data-field=state]")?.textContent.trim();
      if (state && window.__states.at(-1) !== state) window.__states.push(state);
      const liveState = live?.dataset.liveState;
      if (liveState && window.__liveStates.at(-1) !== liveState)
        window.__liveStates.push(liveState);
    };
    new MutationObserver(record).observe(document, {
      subtree: true,
      childList: true,
      characterData: true,
      attributes: true,
      attributeFilter: ["data-live-state"],
    });
  });
  await visit(person, "/payments", "payments");
  await writeFile(readyFile, "ready\n");
  const { payment_id: id } = JSON.parse(await waitForFile(goFile, HANDSHAKE_TIMEOUT_MS));
  const { status } = await visit(person, `/payments/${id}`, `payment-${id}-running`);
  const navigations = countNavigations(person.page);
  await person.page.evaluate(() => {
    window.__marker = 1;
  });
  await person.page.waitForFunction(
    () => document.querySelector("#live dd[data-field=state]")?.textContent.trim() === "SUCCEEDED",
    null,
    { timeout: SETTLE_TIMEOUT_MS },
  );
  // The stream's `end` makes a last refresh, then the page says the stream is closed.
  await person.page.waitForSelector('#live[data-live-state="closed"]', { state: "attached" });
  await snap(person, `payment-${id}-settled`);
  const watched = await person.page.evaluate(() => ({
    marker: window.__marker ?? null,
    states: window.__states,
    liveStates: window.__liveStates,
  }));
  const result = {
    status,
    ...watched,
    navigations: navigations.count,
    url: person.page.url(),
    shown: await paymentShown(person.page),
    problems: person.problems,
  };
  await signOut(person);
  return result;
}

// The payments filters replace #results without a reload and put the filter in the URL: the
// state select (twice), then the invoice field and the Filter button, then the back button.
async function filters(browser, { invoice_id: invoice, role = "treasury" }) {
  const person = await signIn(browser, "filters", role);
  const { page } = person;
  await visit(person, "/payments", "payments");
  await page.evaluate(() => {
    window.__marker = 1;
  });
  const navigations = countNavigations(page);
  const stages = [];
  const settled = () =>
    page.waitForFunction(() => !document.getElementById("results").hasAttribute("aria-busy"));
  const stage = async (label) => {
    await settled();
    await snap(person, label);
    stages.push({
      label,
      url: page.url(),
      title: await page.title(),
      marker: await page.evaluate(() => window.__marker ?? null),
      rows: await paymentRows(page),
      alert: await textOf(page, "#results [role=alert]"),
    });
  };
  const select = page.locator("form[data-live] select[name=state]");
  for (const state of ["SUCCEEDED", "IN_REVIEW"]) {
    await select.selectOption(state);
    await page.waitForURL((url) => url.searchParams.get("state") === state);
    await stage(`payments-${state.toLowerCase()}`);
  }
  await select.selectOption("");
  await page.waitForURL((url) => !url.searchParams.has("state"));
  await page.locator("form[data-live] input[name=invoice_id]").fill(invoice);
  await page.locator("form[data-live] button[type=submit]").click();
  await page.waitForURL((url) => url.searchParams.get("invoice_id") === invoice);
  await stage("payments-invoice");
  await page.goBack();
  await page.waitForURL((url) => !url.searchParams.has("invoice_id"));
  await page.waitForFunction((invoice) => {
    const rows = [...document.querySelectorAll("#results tr[data-payment-id]")];
    return rows.some((row) => row.cells[1].textContent.trim() !== invoice);
  }, invoice);
  await stage("payments-back");
  const result = { stages, navigations: navigations.count, problems: person.problems };
  await signOut(person);
  return result;
}

// A browser without a client certificate gets no page; a page of another site that posts a
// person's form to the dashboard (a valid token, the person's certificate, the browser's
// cross-site Origin) is refused; the same form posted from the dashboard's origin is accepted.
async function crossSite(browser, { payment_id: id }) {
  const nobody = await signIn(browser, "cross-site", null);
  const bare = await visit(nobody, "/payments", "payments");
  await signOut(nobody);

  const reviewer = await signIn(browser, "cross-site", "reviewer");
  const { page } = reviewer;
  await visit(reviewer, "/review", "review");
  const form = await formFields(page.locator(`tr[data-payment-id="${id}"] form.review`));
  // The other site approves; the control, a post of its own (its own request id), rejects: the
  // payment's verdict then tells which of the two went through.
  const evil = { ...form.fields, verdict: "APPROVE", note: "approved by another site" };
  const own = {
    ...form.fields,
    verdict: "REJECT",
    note: "rejected by the same-origin control",
    request_id: `dash-${randomUUID()}`,
  };
  const inputs = Object.entries(evil)
    .map(
      ([name, value]) =>
        `<input type="hidden" name="${escapeHtml(name)}" value="${escapeHtml(value)}">`,
    )
    .join("");
  await page.route(`${EVIL_ORIGIN}/**`, (route) =>
    route.fulfill({
      contentType: "text/html",
      body:
        `<!doctype html><title>Win a prize</title>` +
        `<form method="post" action="${plan.origin}${form.action}">${inputs}</form>` +
        `<script>document.forms[0].submit()</script>`,
    }),
  );
  const answer = page.waitForResponse(
    (response) =>
      response.url() === `${plan.origin}${form.action}` && response.request().method() === "POST",
  );
  await page.goto(`${EVIL_ORIGIN}/prize`);
  const refused = await answer;
  await page.waitForLoadState("load");
  await snap(reviewer, "evil-post", { status: refused.status() });
  const crossSitePost = {
    status: refused.status(),
    origin: (await refused.request().allHeaders()).origin ?? null,
    alert: await textOf(page, "[role=alert]"),
  };
  // The same fields from the dashboard's own origin: accepted, so the refusal above was the
  // origin's alone.
  const control = await reviewer.context.request.post(`${plan.origin}${form.action}`, {
    form: own,
    headers: { Origin: plan.origin },
    maxRedirects: 0,
  });
  const sameOrigin = { status: control.status(), location: control.headers().location ?? null };
  const result = { bare, crossSitePost, sameOrigin, problems: reviewer.problems };
  await signOut(reviewer);
  return result;
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Every page of the navigation as each person, with the first card group's and webhook
// endpoint's pages: their status, who the header says is signed in, their heading.
async function tour(browser, { roles, paths }) {
  const seen = {};
  for (const role of roles) {
    const person = await signIn(browser, "tour", role);
    seen[role] = { pages: {} };
    const queue = [...paths];
    for (let i = 0; i < queue.length; i += 1) {
      const path = queue[i];
      const { status, error } = await visit(person, path, slug(path));
      const shown = await person.page.evaluate(() => ({
        who: document.querySelector("header .who")?.textContent.trim() ?? null,
        heading: document.querySelector("main h1")?.textContent.trim() ?? null,
        alert: document.querySelector("main [role=alert]")?.textContent.trim() ?? null,
        navigation: [...document.querySelectorAll("nav a")].map((a) => a.getAttribute("href")),
        // The first link to a card group's or an endpoint's own page, to visit next.
        next: [
          ...document.querySelectorAll('main a[href^="/card-groups/"], main a[href^="/webhooks/"]'),
        ]
          .map((a) => a.getAttribute("href"))
          .find((href) => !href.includes("?")),
      }));
      seen[role].pages[path] = { status, error, ...shown };
      const paymentId = /^\/payments\/(pay_[a-z2-7]+)$/.exec(path)?.[1];
      if (paymentId && status === 200) await readEvents(person, paymentId);
      const listing = path === "/card-groups" || path === "/webhooks";
      if (listing && shown.next && !queue.includes(shown.next)) queue.splice(i + 1, 0, shown.next);
    }
    seen[role].problems = person.problems;
    await signOut(person);
  }
  return seen;
}

const SCENARIOS = {
  payment,
  spend,
  reconcile,
  review,
  reader,
  live,
  filters,
  "cross-site": crossSite,
  tour,
};

// --- Main -------------------------------------------------------------------------------------

const browser = await chromium.launch({ executablePath: plan.chromium });
let failure = null;
try {
  for (const scenario of plan.scenarios) {
    const run = SCENARIOS[scenario.name];
    if (!run) throw new Error(`no scenario is named ${scenario.name}`);
    results[scenario.name] = await run(browser, scenario);
  }
} catch (error) {
  failure = error;
  for (const { page, name } of openPages) {
    const path = join(plan.screenshots, `${uniqueName(`${name}-failure`)}.png`);
    await page.screenshot({ path, fullPage: true }).catch(() => {});
    console.error(`on failure, ${name} showed ${page.url()} (screenshot ${path})`);
  }
} finally {
  await drainSaves().catch(() => {});
  await browser.close();
}
const output = { visits, responses: responseCount, results };
if (failure) output.error = failure.message;
console.log(JSON.stringify(output));
if (failure) {
  console.error(`dashboard.mjs: ${failure.stack ?? failure.message}`);
  process.exit(1);
}
