"use strict";
// Renders the conformance report from the embedded data. Every piece of data reaches the page
// through text nodes or attribute setters, never as markup: case text cannot inject anything.

const OUTCOMES = ["pass", "expected-error", "xfail", "xpass", "nondeterministic", "contract", "mismatch", "shape",
  "error", "missing-error", "crash", "timeout", "unsupported", "skip"];
const FAILING = new Set(["xpass", "nondeterministic", "contract", "mismatch", "shape", "error", "missing-error",
  "crash", "timeout"]);
const MEANING = {
  "pass": "within the error bound (or bit-exact where exactness is due)",
  "expected-error": "no valid output exists and the target raised or returned an empty tensor (conformant)",
  "xfail": "a known divergence listed in expectations.toml (not conformant, but known)",
  "xpass": "listed as a known divergence but conformant now: the entry is stale",
  "contract": "within the dtype's worst-case bound, beyond the framework's accumulation contract (cases/contracts.toml)",
  "mismatch": "values beyond the error bound, or NaN/Inf in the wrong places",
  "shape": "wrong output shape or dtype",
  "error": "raised where a value was due",
  "missing-error": "returned values where no valid output exists",
  "crash": "the process running the target died",
  "nondeterministic": "repeated calls on the same data gave different bits (--conformance-repeat)",
  "timeout": "the target did not finish in time",
  "unsupported": "the API cannot express this case",
  "skip": "framework or device not present here",
};
const ROW = 24;

let D;  // the decoded data
let rows = [];  // {case, dtype, rank, cells, text, tags}
let display = [];  // what the matrix shows: {group} or {row}
const state = { outcomes: new Set(OUTCOMES), frameworks: new Set(), devices: new Set(), dtype: "", rank: "", tag: "",
  text: "", groupBy: "file", showIdle: false };
let visibleColumns = [];
let selectedRow = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function chip(outcome, text) {
  return el("span", { class: `chip o-${outcome}`, title: MEANING[outcome] || "" }, text ?? outcome);
}

function fmt(value, digits = 3) {
  if (value === undefined || value === null) return "";
  if (typeof value !== "number") return String(value);
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  return magnitude < 1e-3 || magnitude >= 1e5 ? value.toExponential(digits - 1) : String(Number(value.toPrecision(digits)));
}

function short(cell) {
  switch (cell.o) {
    case "pass": return cell.x ? "= exact" : fmt(cell.r, 2);
    case "expected-error": return "no output";
    case "mismatch": return cell.x ? `≠ ${fmt(cell.u, 2)}ulp` : (cell.r === undefined ? "NaN/Inf" : `${fmt(cell.r, 2)}×`);
    case "contract": return `${fmt(cell.r, 2)}× contract`;
    case "xfail": return `known ${cell.ob || ""}`;
    case "xpass": return "xpass!";
    case "missing-error": return "no raise";
    case "unsupported": return "n/a";
    case "skip": return "–";
    default: return cell.o;
  }
}

// Each bound that judged the values: the dtype's, and the framework's accumulation contract where one is stated.
function boundRows(bounds) {
  if (!bounds) return [];
  const rows = [];
  if (bounds.dtype) rows.push(["dtype bound", `${bounds.dtype.kind}, error/bound ${fmt(bounds.dtype.ratio)}`]);
  if (bounds.contract) {
    const c = bounds.contract;
    rows.push(["contract", `${c.id} (${c.accumulation} accumulation, ${c.kind}), error/bound ${fmt(c.ratio)}`]);
  }
  return rows;
}

function columnLabel(column) {
  const variant = column.variant ? "@" + column.variant : "";
  return `${column.framework}.${column.op}${variant} ${column.version} ${column.device}${column.precision === "strict" ? "" : " " + column.precision}`;
}

function string(index) { return D.strings[index] || ""; }

function binaryBytes(binary) {
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

async function decode() {
  const text = document.getElementById("report-data").textContent.trim();
  // Uint8Array.from(atob(text), mapper) walks an iterator with a call per byte: 3.8 s of a 52 MB
  // report's 7.2 s in Chromium. fromBase64 (Chromium 140, Firefox 133, Safari 18.2) takes 60 ms.
  const bytes = Uint8Array.fromBase64 ? Uint8Array.fromBase64(text) : binaryBytes(atob(text));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

function markIdleColumns() {
  // A target that ran nothing (no device here, or nothing it can express) is hidden by default.
  for (const column of D.columns) {
    column.idle = !rows.some((row) => row.cells[column.n] && !["skip", "unsupported"].includes(row.cells[column.n].o));
  }
}

function prepareRows() {
  rows = D.rows.map((row) => {
    const kase = D.cases[row.case] || { id: row.case };
    const messages = Object.values(row.cells).map((c) => string(c.m)).join(" ");
    const text = [row.case, row.dtype, kase.operation, kase.description, kase.case_file, (kase.tags || []).join(" "), messages]
      .join(" ").toLowerCase();
    // Rank as a dimension of its own: 1-D, 2-D or 3-D, from the input's shape (N, *spatial, C).
    const rank = kase.input_shape ? `${kase.input_shape.length - 2}-D` : "(unknown rank)";
    return { case: kase, dtype: row.dtype, rank, cells: row.cells, tensors: row.rd || [], text: `${text} ${rank.toLowerCase()}`,
      tags: kase.tags || [] };
  });
}

function overview() {
  // The first screen answers "which framework fails which case and why": framework x kind of check,
  // failures first, then the failing checks and the targets that ran nothing; the details fold below.
  const section = document.getElementById("overview");
  const totals = D.summary.by_outcome || {};
  const O = D.overview;
  section.append(el("h2", {}, "Summary"),
    el("p", { id: "totals" }, `${D.summary.total ?? 0} checks (case × target × dtype): `,
      OUTCOMES.filter((o) => totals[o]).map((o) => chip(o, `${totals[o]} ${o}`))));
  const glance = el("table", { class: "plain", id: "glance" },
    el("tr", {}, el("th", {}, "framework"), O.kinds.map((k) => el("th", {}, k)), el("th", {}, "known divergences")));
  for (const framework of O.frameworks) {
    const known = (O.known[framework] || []).map((k) => /^https?:\/\//.test(k.link || "")
      ? el("a", { href: k.link, rel: "noopener noreferrer", target: "_blank", title: `${k.checks} check(s) excused` }, k.id)
      : el("span", { title: `${k.checks} check(s) excused` }, k.id));  // (only web links become links)
    glance.append(el("tr", { "data-framework": framework }, el("th", {}, framework),
      O.kinds.map((kind) => glanceCell(O.cells[`${framework}|${kind}`])),
      el("td", { class: "divergences" }, known.flatMap((a, i) => (i ? [", ", a] : [a])))));
  }
  section.append(glance);
  if (O.failure_count) {
    // By cause: a framework's regression fails hundreds of checks at once. Each group: its count, the
    // cause, one example (a link to its detail) and the known divergence that nearly matched.
    const groups = O.failure_groups || [];
    const list = el("ul", { id: "failing-checks" }, groups.slice(0, 5).map((g) => {
      const [exampleCase, target, dtype] = g.example.split(" ");
      const near = g.near_miss ? ` (nearly known: ${g.near_miss})` : "";  // (first: the line is cut at the screen's edge)
      return el("li", { title: `${g.cause}${near}; e.g. ${g.example}: ${g.example_detail}` }, el("b", {}, `${g.count} × `),
        `${g.framework} ${g.kind} `, chip(g.outcome), ` ${g.cause}`, near ? el("span", { class: "muted" }, near) : null,
        "; e.g. ", el("a", { href: `#case=${encodeURIComponent(exampleCase)}&dtype=${encodeURIComponent(dtype)}` }, exampleCase),
        ` ${dtype} `, el("b", {}, target), ` ${g.example_detail}`);
    }));
    const more = groups.length - Math.min(5, groups.length);
    section.append(el("h3", {}, `Failing checks (${O.failure_count}, ${groups.length} cause(s))`), list,
      el("button", { type: "button", id: "show-failures", onclick: () => { setOutcomes(FAILING);
        document.getElementById("matrix-section").scrollIntoView(); } },
      more > 0 ? `${more} more cause(s): every failing check in the matrix` : "every failing check in the matrix"));
  }
  for (const idle of O.idle) {
    section.append(el("details", { class: "idle" }, el("summary", {},
      `Ran nothing here: ${idle.targets.length} target(s), ${idle.checks} checks: ${idle.reason}`),
    el("p", { class: "muted" }, idle.targets.join(", "))));
  }
  for (const warning of O.warnings) {
    section.append(el("p", { class: "warning" }, `${warning.category} at ${warning.where} (${warning.checks} check(s) of ` +
      `${warning.targets.join(", ")}): ${warning.message}`));
  }
  if (D.case_errors.length) {
    section.append(el("h3", {}, `Invalid case files (${D.case_errors.length})`),
      el("ul", { id: "case-errors" }, D.case_errors.map((e) => el("li", {},
        `${e.file}${e.line ? ":" + e.line : ""}: ${e.case ? "case " + e.case + ": " : ""}${e.field ? "field " + e.field + ": " : ""}${e.message}`))));
  }
  section.append(perTarget());
  if (D.expectations.length) {
    const statuses = {};
    for (const entry of D.expectations) statuses[entry.status] = (statuses[entry.status] || 0) + 1;
    const known = el("table", { class: "plain", id: "expectations-table" },
      el("tr", {}, ["id", "status", "xfail", "xpass", "not run", "reason", "link"].map((h) => el("th", {}, h))));
    for (const entry of D.expectations) {
      known.append(el("tr", {}, el("td", {}, entry.id), el("td", { class: `status-${entry.status.replace(" ", "-")}` },
        entry.status === "reproduced" ? chip("xfail", entry.status) : entry.status === "not evaluated" ? entry.status
          : chip("xpass", entry.status), entry.narrow ? el("div", { class: "muted" }, entry.narrow) : null),
      el("td", { class: "num" }, entry.xfail), el("td", { class: "num" }, entry.xpass), el("td", { class: "num" }, entry.not_run),
      el("td", {}, entry.reason), el("td", {}, safeLink(entry.link))));
    }
    const needEdit = D.expectations.filter((e) => ["fixed", "partly fixed", "stale", "changed"].includes(e.status)).length;
    section.append(el("details", { id: "expectations", open: needEdit > 0 }, el("summary", {},
      `Known divergences (expectations.toml): ${D.expectations.length} — ` +
      Object.entries(statuses).map(([s, n]) => `${n} ${s}`).join(", ")), known));
  }
  if (D.contracts && D.contracts.length) section.append(contractsTable());
  if (D.history && D.history.checks.length) section.append(historyTable());
  if (D.conflicts.length) {
    section.append(el("details", { open: true }, el("summary", {}, `Runs that disagree (${D.conflicts.length})`),
      el("ul", {}, D.conflicts.slice(0, 200).map((c) => el("li", {}, `${c.case} ${c.target} ${c.dtype} ${c.framework_version}: ` +
        c.outcomes.map((o) => `${o.run}: ${o.outcome}`).join(", "))))));
  }
}

// A history of runs (python -m conformance history): for each failing check, since when it fails and
// in which versions it passed, so a regression names its first failing version at a glance.
function historyTable() {
  const H = D.history;
  const when = (o) => o ? `${o.created.slice(0, 16).replace("T", " ")} UTC, ${o.version || "?"}` : "";  // (runs of one day differ by the minute)
  const table = el("table", { class: "plain", id: "history-table" },
    el("tr", {}, ["case", "target", "dtype", "failing since", "last passed", "passed in", "runs"].map((h) => el("th", {}, h))));
  for (const c of H.checks) {
    table.append(el("tr", {},
      el("td", {}, el("a", { href: `#case=${encodeURIComponent(c.case)}&dtype=${encodeURIComponent(c.dtype)}` }, c.case)),
      el("td", {}, c.target), el("td", {}, c.dtype), el("td", {}, when(c.failing_since)), el("td", {}, when(c.last_passing)),
      el("td", {}, c.passed_in.length ? c.passed_in.join(", ") : "never"), el("td", { class: "num" }, c.runs)));
  }
  const more = H.failing - H.checks.length;
  return el("details", { id: "history", open: true }, el("summary", {},
    `Since when they fail: ${H.failing} failing check(s) in a history of ${H.runs} run(s) (${H.path})`),
  table, more > 0 ? el("p", { class: "muted" }, `${more} more not shown (python -m conformance history show --failing)`) : null);
}

// Accumulation contracts: what each framework keeps while it sums, what this run measured, and the evidence.
function contractsTable() {
  const ratios = (worst) => Object.entries(worst || {}).map(([dtype, r]) => `${dtype} ${fmt(r, 3)}`).join(", ");
  const table = el("table", { class: "plain", id: "contracts-table" },
    el("tr", {}, ["id", "contract", "checks", "broken", "worst ratio, this run (broken included)", "worst ratio kept (stated)", "evidence"]
      .map((h) => el("th", {}, h))));
  let broken = 0;
  for (const c of D.contracts) {
    broken += c.run.broken;
    table.append(el("tr", {}, el("td", {}, c.id), el("td", {}, `${c.statement} (${c.accumulation} accumulation)`),
      el("td", { class: "num" }, c.run.checks), el("td", { class: "num" }, c.run.broken ? chip("contract", c.run.broken) : "0"),
      el("td", {}, ratios(c.run.worst_ratio)), el("td", {}, ratios(c.measured.worst_ratio)),
      el("td", {}, ...c.evidence.map((e) => el("div", {}, safeLink(e.link), " ", el("span", { class: "muted" }, e.says))))));
  }
  return el("details", { id: "contracts" }, el("summary", {},
    `Accumulation contracts (contracts.toml): ${D.contracts.length}, broken by ${broken} check(s)`), table);
}

function glanceCell(cell) {
  if (!cell) return el("td", { class: "glance none" }, "—");
  const state = cell.failing ? "failing" : cell.xfail ? "known" : "ok";
  const title = `${cell.targets} target(s), ${cell.checks} checks: ${cell.conformant} conformant, ${cell.xfail} known divergence(s), ` +
    `${cell.failing} failing, ${cell.unsupported} unsupported, ${cell.skip} skipped` +
    (cell.worst_check ? `; worst error/bound ${fmt(cell.worst_ratio)} (${cell.worst_check})` : "");
  return el("td", { class: `glance ${state}`, title },
    cell.failing ? chip("mismatch", `${cell.failing} failing`) : null,
    cell.xfail ? chip("xfail", `${cell.xfail} known`) : null,
    el("span", { class: "conformant" }, `${cell.conformant} ok`),
    cell.worst_ratio !== null ? el("span", { class: "ratio" }, `worst error/bound ${fmt(cell.worst_ratio, 2)}`) : null);
}

function perTarget() {
  const active = D.columns.filter((c) => !c.idle);
  const table = el("table", { class: "plain", id: "summary-table" },
    el("tr", {}, el("th", {}, "target"), el("th", {}, "version"), OUTCOMES.map((o) => el("th", { title: MEANING[o] }, o))));
  for (const column of active) {
    const counts = {};
    for (const row of rows) {
      const cell = row.cells[column.n];
      if (cell) counts[cell.o] = (counts[cell.o] || 0) + 1;
    }
    table.append(el("tr", {}, el("td", {}, column.target), el("td", {}, column.version),
      OUTCOMES.map((o) => el("td", { class: "num" }, counts[o] ? chip(o, String(counts[o])) : ""))));
  }
  const idle = D.columns.length - active.length;
  return el("details", { id: "per-target" }, el("summary", {},
    `Per target: ${active.length} target(s) that ran checks` + (idle ? ` (${idle} that ran nothing are listed above)` : "")), table);
}

function safeLink(url) {
  if (!/^https?:\/\//.test(url || "")) return url || "";
  return el("a", { href: url, rel: "noopener noreferrer", target: "_blank" }, url);
}

function filters() {
  const box = document.getElementById("filters");
  const outcomes = el("fieldset", { id: "filter-outcome" }, el("legend", {}, "outcome"));
  for (const o of OUTCOMES) {
    outcomes.append(el("label", { title: MEANING[o] }, el("input", { type: "checkbox", value: o, checked: true,
      onchange: (e) => { toggle(state.outcomes, o, e.target.checked); refresh(); } }), " ", chip(o)));
  }
  const presets = el("span", {},
    el("button", { type: "button", id: "only-failures", onclick: () => setOutcomes(FAILING) }, "failures only"),
    " ", el("button", { type: "button", onclick: () => setOutcomes(new Set(OUTCOMES)) }, "all"));
  outcomes.append(presets);
  const frameworks = [...new Set(D.columns.map((c) => c.framework))].sort();
  const devices = [...new Set(D.columns.map((c) => c.device))].sort();
  frameworks.forEach((f) => state.frameworks.add(f));
  devices.forEach((d) => state.devices.add(d));
  const checkboxes = (name, values, set) => el("fieldset", { id: `filter-${name}` }, el("legend", {}, name),
    values.map((v) => el("label", {}, el("input", { type: "checkbox", value: v, checked: true,
      onchange: (e) => { toggle(set, v, e.target.checked); refresh(); } }), " ", v)));
  const dtypes = [...new Set(rows.map((r) => r.dtype))].sort();
  const ranks = [...new Set(rows.map((r) => r.rank))].sort();
  const tags = [...new Set(rows.flatMap((r) => r.tags))].sort();
  const select = (name, values, key, first) => el("label", {}, `${name} `, el("select", { id: `filter-${name}`,
    onchange: (e) => { state[key] = e.target.value; refresh(); } }, first ? el("option", { value: "" }, first) : null,
  values.map((v) => el("option", { value: v }, v))));
  let timer;
  const search = el("input", { type: "search", id: "filter-text", placeholder: "search case, description, message…",
    oninput: (e) => { clearTimeout(timer); timer = setTimeout(() => { state.text = e.target.value.toLowerCase(); refresh(); }, 120); } });
  const idle = D.columns.filter((c) => c.idle).length;
  const showIdle = el("label", { title: "targets whose every check was skipped or unsupported, e.g. GPU targets on a CPU machine" },
    el("input", { type: "checkbox", id: "show-idle", onchange: (e) => { state.showIdle = e.target.checked; refresh(); } }),
    ` show ${idle} target(s) that ran nothing`);
  box.append(...[outcomes, checkboxes("framework", frameworks, state.frameworks), checkboxes("device", devices, state.devices),
    idle ? showIdle : null, select("dtype", dtypes, "dtype", "all dtypes"), select("rank", ranks, "rank", "all ranks"),
    select("tag", tags, "tag", "all tags"), select("group", ["file", "rank", "tag", "none"], "groupBy", null),
    search].filter(Boolean));
}

function toggle(set, value, on) { if (on) set.add(value); else set.delete(value); }

function setOutcomes(chosen) {
  state.outcomes = new Set(chosen);
  for (const box of document.querySelectorAll("#filter-outcome input")) box.checked = chosen.has(box.value);
  refresh();
}

function header() {
  const head = document.getElementById("matrix-head");
  head.replaceChildren(el("div", { class: "label" }, "case", el("span", { class: "dtype" }, "dtype")));
  for (const column of visibleColumns) {
    head.append(el("div", { class: "col", title: columnLabel(column) },
      el("div", {}, column.framework), el("div", {}, column.op),
      el("div", { class: "variant" }, column.variant ? "@" + column.variant : "\u00a0"), el("div", {}, column.version),
      el("div", {}, column.device + (column.precision === "strict" ? "" : " · " + column.precision))));
  }
}

function refresh() {
  visibleColumns = D.columns.filter((c) => state.frameworks.has(c.framework) && state.devices.has(c.device) &&
    (state.showIdle || !c.idle));
  const shown = rows.filter((row) => {
    if (state.dtype && row.dtype !== state.dtype) return false;
    if (state.rank && row.rank !== state.rank) return false;
    if (state.tag && !row.tags.includes(state.tag)) return false;
    if (state.text && !row.text.includes(state.text)) return false;
    return visibleColumns.some((c) => row.cells[c.n] && state.outcomes.has(row.cells[c.n].o));
  });
  display = [];
  if (state.groupBy === "none") {
    display = shown.map((row) => ({ row }));
  } else {
    const groups = new Map();
    for (const row of shown) {
      const keys = state.groupBy === "file" ? [row.case.case_file || "(no file)"]
        : state.groupBy === "rank" ? [row.rank] : (row.tags.length ? row.tags : ["(untagged)"]);
      for (const key of keys) {
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(row);
      }
    }
    for (const [key, members] of [...groups.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
      display.push({ group: `${key} (${members.length})` });
      for (const row of members) display.push({ row });
    }
  }
  document.getElementById("matrix-count").textContent =
    `${shown.length} of ${rows.length} rows (case × dtype), ${visibleColumns.length} of ${D.columns.length} target columns`;
  header();
  document.getElementById("matrix-spacer").style.height = `${display.length * ROW}px`;
  paint();
}

function paint() {
  const scroller = document.getElementById("matrix");
  const body = document.getElementById("matrix-body");
  const headHeight = document.getElementById("matrix-head").offsetHeight;
  const first = Math.max(0, Math.floor((scroller.scrollTop - headHeight) / ROW) - 10);
  const last = Math.min(display.length, first + Math.ceil(scroller.clientHeight / ROW) + 20);
  const fragment = document.createDocumentFragment();
  fragment.append(document.getElementById("matrix-spacer"));
  for (let i = first; i < last; i++) {
    const item = display[i];
    const line = el("div", { class: item.group ? "mrow group" : "mrow", style: `top:${i * ROW}px`, role: "row" });
    if (item.group) {
      line.append(el("div", { class: "label" }, item.group));
    } else {
      const row = item.row;
      if (row === selectedRow) line.classList.add("selected");
      line.dataset.case = row.case.id;
      line.dataset.dtype = row.dtype;
      line.append(el("div", { class: "label", title: row.case.description || row.case.id }, row.case.id,
        el("span", { class: "dtype" }, row.dtype), opBadge(row.case)));
      for (const column of visibleColumns) {
        const cell = row.cells[column.n];
        line.append(cell ? el("div", { class: `cell o-${cell.o}`, title: `${columnLabel(column)}: ${cell.o}` }, short(cell))
          : el("div", { class: "cell none" }));
      }
      line.addEventListener("click", () => openDetail(row));
    }
    fragment.append(line);
  }
  body.replaceChildren(fragment);
}

function keyValueTable(pairs, id) {
  return el("table", { class: "plain", id }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))));
}

function heatmap(map) {
  const ns = "http://www.w3.org/2000/svg";
  const rowsCount = map.values.length;
  const colsCount = rowsCount ? map.values[0].length : 0;
  const size = Math.max(4, Math.min(16, Math.floor(320 / Math.max(rowsCount, colsCount, 1))));
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "heatmap");
  svg.setAttribute("width", colsCount * size);
  svg.setAttribute("height", rowsCount * size);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `per-pixel ${map.quantity}`);
  const exact = map.quantity.startsWith("|error|");
  const coverage = map.kind === "coverage";
  const most = coverage ? Math.max(1, ...map.values.flat()) : 1;
  map.values.forEach((line, i) => line.forEach((value, j) => {
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", j * size);
    rect.setAttribute("y", i * size);
    rect.setAttribute("width", size);
    rect.setAttribute("height", size);
    rect.setAttribute("fill", coverage ? coverageColour(value, most) : heatColour(value, exact));
    const title = document.createElementNS(ns, "title");
    const h = i * map.block[0], w = j * map.block[1];
    title.textContent = `rows ${h}–${Math.min(h + map.block[0], map.hw[0]) - 1}, cols ${w}–${Math.min(w + map.block[1], map.hw[1]) - 1}: ` +
      `${map.quantity} ${value === null ? "non-finite" : fmt(value)}`;
    rect.append(title);
    svg.append(rect);
  }));
  if (coverage) {
    return el("figure", { class: "heatmap-figure" }, svg, el("figcaption", { class: "muted" },
      `Receptive field of the centre output, as this target computed it (${map.hw[0]}×${map.hw[1]} input): ` +
      "blue pixels reach it (darker: more paths), white ones do not; white inside the blue square is a hole (gridding)."));
  }
  return el("figure", { class: "heatmap-figure" }, svg, el("figcaption", { class: "muted" },
    `${map.quantity}, max over batch and channels, output ${map.hw[0]}×${map.hw[1]}` +
    (map.block[0] * map.block[1] > 1 ? `, ${map.block[0]}×${map.block[1]} pixels per cell (max)` : "") +
    (exact ? ". White: exact; red: differs." : ". White: no error; blue: inside the bound; yellow→red: 1× to 1000× the bound; black: NaN/Inf differs.")));
}

function coverageColour(value, most) {
  if (value === null || value <= 0) return "#fff";
  const light = Math.round(85 - 55 * Math.sqrt(value / most));  // more paths: darker blue
  return `hsl(212, 90%, ${light}%)`;
}

function heatColour(value, exact) {
  if (value === null) return "#000";
  if (value <= 0 || value === -Infinity) return "#fff";
  if (exact) return "#cf222e";
  if (value <= 1) return `hsl(210, 80%, ${95 - 40 * value}%)`;
  const t = Math.min(1, Math.log10(value) / 3);
  return `hsl(${50 - 50 * t}, 95%, ${55 - 15 * t}%)`;
}

const TRANSPOSED = "conv_transpose";

// The op a row is, where it is not the forward convolution (older results files have no `operation`).
function opBadge(kase) {
  return kase.operation === TRANSPOSED ? el("span", { class: "op", title: "transposed convolution" }, "transposed") : null;
}

// The spatial axes' letters by rank (a record's shapes are (N, *spatial, C) and (*spatial, I, O)).
const SPATIAL = { 1: "W", 2: "HW", 3: "DHW" };

function openDetail(row) {
  selectedRow = row;
  const kase = row.case;
  const transposed = kase.operation === TRANSPOSED;
  const space = SPATIAL[(kase.input_shape || []).length - 2] || "…";
  const perAxis = (kase.pads || []).length === 2 ? "[[top, bottom], [left, right]]" : "[[before, after] per axis]";
  const content = document.getElementById("detail-content");
  const parts = [el("h2", { id: "detail-title" }, kase.id, el("span", { class: "dtype" }, row.dtype)),
    kase.description ? el("p", { class: "description" }, kase.description) : null,
    el("p", {}, (kase.tags || []).map((t) => el("span", { class: "tag" }, t))),
    keyValueTable([["file", kase.case_file], ["operation", kase.operation || "conv"], [`input (N${space}C)`, kase.input_shape],
      [transposed ? `kernel (the forward op's ${space}IO: taps, C_out / groups, C_in)` : `kernel (${space}IO)`, kase.kernel_shape],
      [`output (N${space}C)`, kase.output_shape], ["rate", kase.rate], ["stride", kase.stride], ["padding", kase.padding],
      [transposed ? `crops ${perAxis}` : `pads ${perAxis}`, kase.pads],
      ...(transposed ? [["output_padding (per axis)", kase.output_padding]] : []),
      ["groups", kase.groups], ["expected", kase.expect],
      ["input sha256", kase.input_sha256], ["kernel sha256", kase.kernel_sha256]], "detail-params"),
    el("h3", {}, "Results per target")];
  for (const column of D.columns) {
    const cell = row.cells[column.n];
    if (!cell) continue;
    const bad = FAILING.has(cell.o) || cell.o === "xfail";
    const block = el("details", { class: "result", open: bad || (cell.em && cell.em.kind === "coverage") },
      el("summary", {}, chip(cell.o), " ", columnLabel(column), " ", el("span", { class: "muted" }, short(cell))));
    block.append(keyValueTable([["outcome", cell.o + (cell.ob ? ` (observed ${cell.ob})` : "")],
      ["error / bound", cell.x ? "bit-exact required" : fmt(cell.r)], ...boundRows(cell.bd), ["max |error|", fmt(cell.ae)],
      ["max relative error", fmt(cell.re)], ["max ULP", fmt(cell.u)], ["output shape, dtype", cell.gs ? `${JSON.stringify(cell.gs)} ${cell.gd || ""}` : ""],
      ["run", cell.run !== undefined && D.runs[cell.run] ? D.runs[cell.run].label : ""], ["seconds", fmt(cell.t)]]));
    if (cell.w) {
      block.append(el("p", {}, "worst element ", el("code", {}, `[n, h, w, c] = ${JSON.stringify(cell.w.index)}`),
        `: expected ${cell.w.expected}, got ${cell.w.got}, bound ${fmt(cell.w.bound)}`));
    }
    if (string(cell.m)) block.append(el("p", { class: "message" }, string(cell.m)));
    if (cell.k) {
      block.append(el("p", {}, `known divergence ${cell.k.id}: ${cell.k.reason} `, safeLink(cell.k.link)));
    }
    if (cell.em) block.append(heatmap(cell.em));
    // A row keeps the tensors part of its reproductions once (its targets share it); a cell, its call.
    // A brief cell (a very large run's conformant or not-run check) has none, and a routine
    // large-tier record leaves its reproduction out: the reproduce command writes it.
    if (!cell.rp && D.brief) {
      block.append(el("p", { class: "muted" }, `error details: in the results file (this report keeps them ` +
        `for failing and excused checks only, above ${D.brief.limit.toLocaleString()} results)`));
    }
    const source = cell.rp ? (row.tensors[cell.rp[0]] || "") + (cell.rp[1] || "") : "";
    if (!source && (cell.o === "pass" || cell.o === "expected-error")) {
      block.append(el("p", { class: "muted" }, "reproduction: ",
        el("code", {}, `python -m conformance reproduce '${kase.id}' '${column.target}' ${row.dtype}`)));
    }
    if (source) {
      const pre = el("pre", { class: "reproduction" }, source);
      block.append(el("div", {}, el("span", { class: "muted" }, "reproduction "),
        el("button", { type: "button", class: "copy", onclick: () => navigator.clipboard && navigator.clipboard.writeText(source) }, "copy")), pre);
    }
    parts.push(block);
  }
  content.replaceChildren(...parts.filter(Boolean));
  const panel = document.getElementById("detail");
  panel.hidden = false;
  panel.scrollTop = 0;
  const hash = `#case=${encodeURIComponent(kase.id)}&dtype=${encodeURIComponent(row.dtype)}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
  paint();
}

function closeDetail() {
  document.getElementById("detail").hidden = true;
  selectedRow = null;
  history.replaceState(null, "", location.pathname + location.search);
  paint();
}

function openFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const row = rows.find((r) => r.case.id === params.get("case") && r.dtype === params.get("dtype"));
  if (row) openDetail(row);
}

function environment() {
  const section = document.getElementById("environment");
  section.append(el("h2", {}, "Environment"));
  for (const run of D.runs) {
    const flat = [];
    const walk = (prefix, value) => {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
      } else flat.push([prefix, Array.isArray(value) ? value.join(", ") : value]);
    };
    walk("", run.environment || {});
    section.append(el("details", { open: D.runs.length === 1, class: "run" }, el("summary", {}, run.label || "run"),
      el("p", { class: "muted" }, `created ${run.created || "?"}; command: ${(run.command || []).join(" ")}`),
      keyValueTable(flat)));
  }
}

async function main() {
  const started = performance.now();
  D = await decode();
  prepareRows();
  markIdleColumns();
  document.getElementById("title").textContent = D.title;
  document.getElementById("subtitle").textContent = `${D.runs.length} run(s), created ${D.created || "?"}; ` +
    `${rows.length} case × dtype rows, ${D.columns.length} target columns. Click a row for its details.`;
  const cut = D.runs.filter((run) => run.interrupted);
  if (cut.length) {
    const banner = document.getElementById("interrupted");
    banner.hidden = false;
    banner.textContent = `Interrupted run: shown are the ${cut.map((r) => r.interrupted.results).join(" + ")} ` +
      `result(s) streamed to ${cut.map((r) => r.interrupted.stream).join(", ")} before it stopped; ` +
      "checks that had not finished are missing.";
  }
  document.getElementById("legend").replaceChildren("Cells: ", ...OUTCOMES.map((o) => chip(o)),
    " · figure in a pass cell: worst error/bound ratio (below 1 passes); “= exact”: bit-exact where due.");
  overview();
  filters();
  environment();
  refresh();
  document.getElementById("matrix").addEventListener("scroll", () => requestAnimationFrame(paint), { passive: true });
  document.getElementById("detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });
  openFromHash();
  window.addEventListener("hashchange", openFromHash);
  document.body.dataset.ready = "true";
  document.body.dataset.renderMs = String(Math.round(performance.now() - started));
}

main().catch((error) => {
  document.getElementById("subtitle").textContent = `The report could not be drawn: ${error}`;
  document.body.dataset.ready = "error";
});
