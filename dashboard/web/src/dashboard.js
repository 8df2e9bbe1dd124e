// The dashboard's script. Every page is complete without it: the server renders each report as
// a table, each filter as a GET form and each payment as it stands. With it, a report also
// draws as a bar chart, filters and "next page" replace the results without reloading the
// page, and a payment's page follows the payment as it changes.
//
// What the server emits for each of these is written down in README.md beside this file.

import { BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, Tooltip } from 'chart.js';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, Tooltip, Legend);

// Okabe and Ito's colours, told apart by people with any kind of colour blindness.
const COLOURS = ['#0072b2', '#e69f00', '#009e73', '#cc79a7', '#56b4e9', '#d55e00', '#f0e442', '#000000'];
const CHART_HEIGHT_PX = 280;
// Ten to this power still converts minor units to a float and back exactly.
const EXPONENT_MAX = 9;

// Charts: each <figure class="chart" data-chart="bar"> holds a table of amounts in minor units;
// draw it as a bar chart above the table, which stays as the chart's text alternative.
function drawCharts(root) {
  for (const figure of root.querySelectorAll('figure.chart[data-chart="bar"]')) {
    if (figure.dataset.drawn === 'true') continue;
    try {
      drawBarChart(figure);
    } catch (error) {
      // The table is still there: a figure we cannot read is shown as the server sent it.
      console.error('chart not drawn:', error);
    }
  }
}

function drawBarChart(figure) {
  const table = figure.querySelector('table');
  if (!table) throw new Error('the figure has no table');
  const series = [...table.querySelectorAll('thead th[scope="col"]')]
    .slice(1)
    .map((th) => th.textContent.trim());
  const rows = [...table.querySelectorAll('tbody > tr')];
  const labels = rows.map((row) => row.querySelector('th[scope="row"]')?.textContent.trim() ?? '');

  // One dataset per (series, currency), in the order they first appear; a row whose cell is in
  // another currency is a gap in this dataset.
  const datasets = new Map();
  rows.forEach((row, rowIndex) => {
    row.querySelectorAll(':scope > td').forEach((cell, seriesIndex) => {
      if (!cell.hasAttribute('data-minor-units')) return;
      const amount = readAmount(cell);
      const key = `${seriesIndex} ${amount.currency}`;
      if (!datasets.has(key)) {
        datasets.set(key, {
          seriesIndex,
          name: series[seriesIndex] ?? `Series ${seriesIndex + 1}`,
          currency: amount.currency,
          exponents: new Array(rows.length).fill(null),
          data: new Array(rows.length).fill(null),
        });
      }
      const dataset = datasets.get(key);
      dataset.data[rowIndex] = amount.minorUnits / 10 ** amount.exponent;
      dataset.exponents[rowIndex] = amount.exponent;
    });
  });
  if (datasets.size === 0) throw new Error('the table has no amounts');
  const ordered = [...datasets.values()].sort((a, b) => a.seriesIndex - b.seriesIndex);
  const currencies = new Set(ordered.map((dataset) => dataset.currency));

  const caption = figure.querySelector('figcaption')?.textContent.trim() ?? '';
  const area = document.createElement('div');
  area.className = 'chart-area';
  area.style.position = 'relative';
  area.style.height = `${CHART_HEIGHT_PX}px`;
  const canvas = document.createElement('canvas');
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', caption);
  area.append(canvas);
  table.before(area);
  const details = document.createElement('details');
  const summary = document.createElement('summary');
  summary.textContent = 'Table';
  table.replaceWith(details);
  details.append(summary, table);

  new Chart(canvas, {
    type: 'bar',
    data: {
      labels,
      datasets: ordered.map((dataset, index) => ({
        label: currencies.size > 1 ? `${dataset.name} (${dataset.currency})` : dataset.name,
        data: dataset.data,
        currency: dataset.currency,
        backgroundColor: COLOURS[index % COLOURS.length],
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      // A day with no amount in a currency leaves no empty slot in its group of bars.
      skipNull: true,
      plugins: {
        legend: { display: ordered.length > 1 },
        tooltip: {
          callbacks: {
            label: (context) =>
              `${context.dataset.label}: ${formatAmount(context.parsed.y, context.dataset.currency)}`,
          },
        },
      },
      scales: {
        y: {
          beginAtZero: true,
          // Amounts in one currency read as money; several share the axis as plain numbers.
          ticks:
            currencies.size === 1
              ? { callback: (value) => formatAmount(value, ordered[0].currency) }
              : {},
        },
      },
    },
  });

  // What the chart drew for the first series, back in minor units, for the browser tests to
  // compare with the server's own totals.
  const totals = {};
  for (const dataset of ordered) {
    if (dataset.seriesIndex !== 0) continue;
    let total = totals[dataset.currency] ?? 0;
    dataset.data.forEach((value, rowIndex) => {
      if (value !== null) total += Math.round(value * 10 ** dataset.exponents[rowIndex]);
    });
    totals[dataset.currency] = total;
  }
  figure.dataset.totals = JSON.stringify(totals);
  figure.dataset.drawn = 'true';
}

function readAmount(cell) {
  const minorUnits = Number(cell.dataset.minorUnits);
  const exponent = Number(cell.dataset.exponent);
  const currency = cell.dataset.currency ?? '';
  if (!Number.isSafeInteger(minorUnits)) throw new Error(`not an amount: ${cell.dataset.minorUnits}`);
  if (!Number.isInteger(exponent) || exponent < 0 || exponent > EXPONENT_MAX) {
    throw new Error(`not a currency exponent: ${cell.dataset.exponent}`);
  }
  if (!/^[A-Z]{3}$/.test(currency)) throw new Error(`not a currency code: ${currency}`);
  return { minorUnits, exponent, currency };
}

function formatAmount(value, currency) {
  try {
    return new Intl.NumberFormat(document.documentElement.lang || undefined, {
      style: 'currency',
      currency,
    }).format(value);
  } catch {
    return `${value} ${currency}`;
  }
}

// Filters without a reload: a <form data-live> (GET) and the rel=next link inside #results
// fetch the page they would have loaded and swap in its #results; the address bar and the
// back button follow, as they would with a full load.
let loading = null;

function enhanceLiveForms() {
  const results = document.getElementById('results');
  if (!results) return;
  const forms = [...document.querySelectorAll('form[data-live]')].filter(
    (form) => form.method === 'get',
  );
  for (const form of forms) {
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      loadResults(formUrl(form), { push: true });
    });
    form.addEventListener('change', (event) => {
      if (event.target instanceof HTMLSelectElement) loadResults(formUrl(form), { push: true });
    });
  }
  document.addEventListener('click', (event) => {
    const link = event.target instanceof Element ? event.target.closest('#results a[rel~="next"]') : null;
    if (!link || !isPlainClick(event) || link.target || link.origin !== location.origin) return;
    event.preventDefault();
    loadResults(link.href, { push: true });
  });
  // Mark this entry as ours, so going back to it reloads its results; entries pushed by
  // in-page anchors carry no state and are left to the browser.
  history.replaceState({ results: true }, '');
  window.addEventListener('popstate', (event) => {
    if (event.state?.results) loadResults(location.href, { push: false });
  });
}

function formUrl(form) {
  const url = new URL(form.getAttribute('action') ?? '', document.baseURI);
  url.search = '';
  for (const [name, value] of new FormData(form)) {
    if (typeof value === 'string' && value !== '') url.searchParams.append(name, value);
  }
  return url.href;
}

function isPlainClick(event) {
  return event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey;
}

async function loadResults(url, { push }) {
  const results = document.getElementById('results');
  // The last thing asked for wins: a slower earlier answer must not overwrite it.
  loading?.abort();
  const controller = new AbortController();
  loading = controller;
  results.setAttribute('aria-busy', 'true');
  try {
    const response = await fetchPage(url, controller.signal);
    const page = parsePage(await response.text());
    const fresh = page.getElementById('results');
    if (response.ok && fresh) {
      replaceContents(results, fresh);
      if (page.title) document.title = page.title;
      if (!push) syncForms(page);
    } else if (response.ok) {
      // Not a page with results (a sign-in page, say): let the browser show it whole.
      location.assign(response.url || url);
      return;
    } else {
      const reason = textOf(page.querySelector('main')) || response.statusText;
      showAlert(results, reason || `The page could not be loaded (${response.status}).`);
    }
    if (push) history.pushState({ results: true }, '', response.redirected ? response.url : url);
  } catch (error) {
    if (error.name === 'AbortError') return;
    showAlert(results, 'The page could not be loaded. Check the connection and try again.');
  } finally {
    if (loading === controller) {
      loading = null;
      results.removeAttribute('aria-busy');
    }
  }
}

// After going back or forward, show in each form the filters of the page now shown.
function syncForms(page) {
  const fresh = page.querySelectorAll('form[data-live]');
  document.querySelectorAll('form[data-live]').forEach((form, index) => {
    if (!fresh[index]) return;
    for (const control of fresh[index].elements) {
      const current = control.name ? form.elements.namedItem(control.name) : null;
      if (current && 'value' in current && !(current instanceof RadioNodeList)) current.value = control.value;
    }
  });
}

// The words of an element, its blocks' texts separated by one space.
function textOf(element) {
  if (!element) return '';
  const parts = element.children.length > 0 ? [...element.children] : [element];
  return parts.map((part) => part.textContent.replace(/\s+/g, ' ').trim()).filter(Boolean).join(' ');
}

function showAlert(results, text) {
  const alert = document.createElement('p');
  alert.setAttribute('role', 'alert');
  alert.textContent = text;
  destroyCharts(results);
  results.replaceChildren(alert);
}

// Live updates: a [data-watch] element names a server-sent-events stream; on each event,
// refetch this page and swap in the element's new contents, at most one fetch at a time.
function watchAll(root) {
  for (const element of root.querySelectorAll('[data-watch]')) {
    if (!element.dataset.liveState && element.id) watch(element);
  }
}

function watch(element) {
  const source = new EventSource(element.dataset.watch);
  element.dataset.liveState = 'connecting';
  let running = null;
  let again = false;

  // Events that arrive during a fetch are coalesced into one more fetch after it; the promise
  // settles when the page shows what the server had after the last of them.
  const refresh = () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          const response = await fetchPage(location.href);
          // On an error answer keep what is shown; the next event tries again.
          if (!response.ok) break;
          const fresh = parsePage(await response.text()).getElementById(element.id);
          if (fresh) replaceContents(element, fresh);
        } while (again);
      } catch (error) {
        console.error('live update failed:', error);
      } finally {
        running = null;
      }
    })();
    return running;
  };

  const close = () => {
    source.close();
    element.dataset.liveState = 'closed';
  };

  source.addEventListener('open', () => {
    element.dataset.liveState = 'open';
  });
  source.addEventListener('message', () => {
    // The element left the page (its results were replaced): nobody is watching any more.
    if (!element.isConnected) return close();
    refresh();
  });
  // The stream is over (the payment is final): show the last state, then say so.
  source.addEventListener('end', () => {
    source.close();
    refresh().then(close);
  });
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) close();
    else element.dataset.liveState = 'connecting';
  });
}

// Shared by both: fetch a page of this dashboard as the browser would, and swap in a part.
function fetchPage(url, signal) {
  return fetch(url, { credentials: 'same-origin', headers: { Accept: 'text/html' }, signal });
}

function parsePage(text) {
  return new DOMParser().parseFromString(text, 'text/html');
}

function replaceContents(target, fresh) {
  destroyCharts(target);
  target.replaceChildren(...fresh.childNodes);
  enhance(target);
}

function destroyCharts(root) {
  for (const canvas of root.querySelectorAll('canvas')) Chart.getChart(canvas)?.destroy();
}

function enhance(root) {
  drawCharts(root);
  watchAll(root);
}

function start() {
  enhance(document);
  enhanceLiveForms();
}

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', start);
} else {
  start();
}
