// ImageDoctor panels: draw what a node returned (its UI output under the key "imagedoctor")
// in the node, under its widgets (and above an image preview, which the front end always draws
// down to the node's bottom). Diagnose: scores table and defect list; Best of N: the ranking; Refine Defects:
// each region with the score before and after and whether it was kept; Save Diagnosis: the path.
//
// Plain JavaScript on the front end's extension API (app.registerExtension, onExecuted,
// addDOMWidget, api.fetchApi("/history")). Panels come back after a page reload from ComfyUI's
// execution history. Where the front end lacks one of these APIs, nothing is drawn and nothing
// breaks: the nodes work the same without the panels.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const KEY = "imagedoctor";
const WIDGET = "imagedoctor_panel";
const NODES = {
  ImageDoctorDiagnose: "diagnose",
  ImageDoctorBestOfN: "ranking",
  ImageDoctorRefineDefects: "refine",
  ImageDoctorSaveDiagnosis: "saved",
};
const MAX_PANEL_HEIGHT = 260; // px at zoom 1; longer content scrolls inside the panel
const PANEL_MARGIN = 10; // the front end's default DOM widget margin
const LABEL_COLOURS = { artifact: "#ff5a5a", misalignment: "#4a8cff" }; // as core/render.py
const SCORES = ["alignment", "aesthetics", "plausibility", "overall"];
const SHORT = { alignment: "align", aesthetics: "aesth", plausibility: "plaus", overall: "overall" };

const CSS = `
.imagedoctor-panel { box-sizing: border-box; width: 100%; overflow: auto; padding: 4px 6px; min-height: 0;
  font: 12px/1.35 system-ui, sans-serif; color: var(--fg-color, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; }
.imagedoctor-panel table { border-collapse: collapse; width: 100%; }
.imagedoctor-panel th, .imagedoctor-panel td { padding: 1px 5px; text-align: right; white-space: nowrap; }
.imagedoctor-panel th { font-weight: 600; opacity: 0.8; border-bottom: 1px solid var(--border-color, #444); }
.imagedoctor-panel td.l, .imagedoctor-panel th.l { text-align: left; }
.imagedoctor-panel tr.top td { font-weight: 600; }
.imagedoctor-panel .muted { opacity: 0.65; }
.imagedoctor-panel .defect { display: flex; gap: 6px; align-items: baseline; margin: 2px 0; }
.imagedoctor-panel .tag { flex: none; padding: 0 4px; border-radius: 3px; color: #fff; font-weight: 600; }
.imagedoctor-panel .reason { white-space: normal; overflow-wrap: anywhere; }
.imagedoctor-panel .head { font-weight: 600; margin: 4px 0 2px; }
.imagedoctor-panel .ok { color: #5c5; font-weight: 600; } .imagedoctor-panel .no { color: #e66; font-weight: 600; }
.imagedoctor-panel .path { font-family: ui-monospace, monospace; word-break: break-all; }
`;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const fmt = (v, digits = 3) => (v === null || v === undefined ? "n/a" : Number(v).toFixed(digits));
const shortLabel = { artifact: "artifact", misalignment: "misalign." };

function defectRow(d) {
  const tag = el("span", { class: "tag", style: `background:${LABEL_COLOURS[d.label] || "#888"}` },
    `${shortLabel[d.label] || d.label} ${d.importance ?? "?"}`);
  return el("div", { class: "defect" }, tag, el("span", { class: "reason" }, d.reason || "(no reason given)"));
}

function renderDiagnose(p) {
  const multi = p.images.length > 1;
  const head = el("tr", {}, multi ? el("th", {}, "#") : null,
    SCORES.map((s) => el("th", { title: s }, SHORT[s])), el("th", {}, "defects"));
  const rows = p.images.map((im) => el("tr", {},
    multi ? el("td", {}, im.index) : null,
    SCORES.map((s) => el("td", {}, fmt(im.scores[s]))),
    el("td", {}, im.full ? im.n_defects : el("span", { class: "muted", title: "scores only (fast mode)" }, "-"))));
  const out = [el("table", {}, head, rows)];
  for (const im of p.images) {
    if (!im.full) continue;
    if (multi) out.push(el("div", { class: "head" }, `image ${im.index}`));
    if (!im.defects.length) out.push(el("div", { class: "muted" }, "no defects found"));
    for (const d of im.defects) out.push(defectRow(d));
    if (im.n_defects > im.defects.length) out.push(el("div", { class: "muted" }, `+ ${im.n_defects - im.defects.length} more`));
    for (const pr of im.problems || []) out.push(el("div", { class: "muted" }, `note: ${pr}`));
  }
  const mode = p.mode && p.mode !== "full" ? ` · ${p.mode}` : "";
  out.unshift(el("div", { class: "muted" }, `format ${p.format}${mode}`));
  return out;
}

function renderRanking(p) {
  const top = new Set(p.top_k);
  const head = el("tr", {}, el("th", {}, "rank"), el("th", {}, "image"), el("th", { title: p.criterion }, "value"),
    el("th", {}, "overall"), el("th", { title: "number of defects (their load: sum of importance / 100)" }, "defects"));
  const rows = p.rows.map((r) => el("tr", { class: top.has(r.index) ? "top" : "" },
    el("td", {}, r.rank), el("td", {}, r.index), el("td", {}, r.value === null ? "unscored" : fmt(r.value, 3)),
    el("td", {}, fmt(r.scores.overall)), el("td", { title: `load ${fmt(r.load, 2)}` }, r.defects)));
  return [el("div", { class: "muted" }, `by ${p.criterion} · best: image ${p.rows[0]?.index} · top ${p.top_k.length} in bold`),
    el("table", {}, head, rows)];
}

function renderRefine(p) {
  const out = [];
  for (const s of p.images) {
    out.push(el("div", { class: "head" }, `image ${s.image}: ${s.accepted} kept, ${s.rejected} rejected`));
  }
  if (!p.steps.length) out.push(el("div", { class: "muted" }, "no regions to refine"));
  for (const s of p.steps) {
    const tag = el("span", { class: "tag", style: `background:${LABEL_COLOURS[s.label] || "#888"}` },
      `${shortLabel[s.label] || s.label} ${s.importance ?? "?"}`);
    const verdict = s.verdict === "accepted" ? el("span", { class: "ok" }, "kept") : el("span", { class: "no" }, "rejected");
    out.push(el("div", { class: "defect" }, tag, el("span", {},
      `${p.images.length > 1 ? `image ${s.image} ` : ""}round ${s.round}, region ${s.region}: ${p.score} `,
      el("b", {}, fmt(s.before, 3)), " \u2192 ", el("b", {}, fmt(s.after, 3)), " ", verdict)));
    if (s.why) out.push(el("div", { class: "muted", style: "margin: -2px 0 3px 8px" }, s.why));
  }
  return out;
}

function renderSaved(p) {
  const n = p.count === 1 ? "1 diagnosis" : `${p.count} diagnoses`;
  return [el("div", {}, `Saved ${n} to`), el("div", { class: "path" }, `output/${p.path}`)];
}

const RENDER = { diagnose: renderDiagnose, ranking: renderRanking, refine: renderRefine, saved: renderSaved };

function ensureStyle() {
  if (document.getElementById("imagedoctor-style")) return;
  document.head.append(el("style", { id: "imagedoctor-style" }, CSS));
}

// Height of a panel's content at a given width, measured off-screen: the widget's own element
// may not be laid out (or even attached) when the front end asks for its size.
let ruler = null;
const measured = new WeakMap(); // content -> {width, html, height}

function measure(content, width) {
  const html = content.innerHTML;
  const hit = measured.get(content);
  if (hit && hit.width === width && hit.html === html) return hit.height;
  if (!ruler) {
    ruler = el("div", { class: "imagedoctor-panel",
      style: "position:absolute; left:-10000px; top:0; visibility:hidden; overflow:visible; height:auto" });
    document.body.append(ruler);
  }
  ruler.style.width = `${width}px`;
  ruler.innerHTML = html;
  // the front end draws the element inside the widget's margin on both sides
  const height = Math.min(Math.ceil(ruler.getBoundingClientRect().height) + 2, MAX_PANEL_HEIGHT) + 2 * PANEL_MARGIN;
  measured.set(content, { width, html, height });
  return height;
}

function panelWidget(node) {
  let w = node.widgets?.find((x) => x.name === WIDGET);
  if (w) return w;
  const content = el("div");
  const box = el("div", { class: "imagedoctor-panel" }, content);
  // the content's own height at the node's width (not the box's height, which the layout sets;
  // and not before the box has a width, when text would wrap letter by letter), capped: longer
  // panels scroll
  const height = () => measure(content, Math.max(80, node.size[0] - 2 * PANEL_MARGIN));
  w = node.addDOMWidget(WIDGET, "imagedoctor", box, {
    serialize: false, // not a value: keeps widgets_values and the API prompt unchanged
    hideOnZoom: false,
    getMinHeight: height,
    getMaxHeight: height,
  });
  w.serialize = false;
  w.imagedoctorBox = content;
  return w;
}

// The front end adds its image preview as a widget when images arrive, and draws it over all the
// space from its top to the node's bottom (renderPreview: node height - widget y): anything placed
// under it would be painted over. So the panel goes right above the preview; the image keeps the
// rest of the node and grows when the node is enlarged.
const PREVIEW = "$$canvas-image-preview";

function placePanel(node) {
  const ws = node.widgets;
  if (!ws) return;
  const i = ws.findIndex((x) => x.name === WIDGET);
  if (i < 0) return;
  const p = ws.findIndex((x) => x.name === PREVIEW);
  const want = p < 0 ? ws.length - 1 : (p > i ? p - 1 : p);
  if (i !== want) {
    const [w] = ws.splice(i, 1);
    ws.splice(want, 0, w);
    node.setDirtyCanvas?.(true, true);
  }
}

function fitNode(node) {
  if (typeof node.computeSize !== "function" || typeof node.setSize !== "function") return;
  const need = node.computeSize();
  // setSize also when the size stays: it makes the front end lay the widgets out again, now
  // that the panel's content (and so its height) is known
  node.setSize([Math.max(node.size[0], need[0]), Math.max(node.size[1], need[1])]);
  node.setDirtyCanvas?.(true, true);
}

function show(node, panel) {
  const render = RENDER[panel?.kind];
  if (!render || typeof node.addDOMWidget !== "function") return;
  ensureStyle();
  const w = panelWidget(node);
  w.imagedoctorBox.replaceChildren(...render(panel));
  w.imagedoctorPanel = panel;
  placePanel(node);
  requestAnimationFrame(() => fitNode(node)); // after the box has laid out
}

function safe(fn) {
  return function (...args) {
    try {
      return fn.apply(this, args);
    } catch (err) {
      console.warn("[ImageDoctor] panel not drawn:", err);
    }
  };
}

// Results of earlier runs, for panels after a page reload: the newest history entry whose
// prompt ran this node id as the same node type (and, where both say, in the same workflow).
async function restoreFromHistory() {
  if (typeof api?.fetchApi !== "function" || !app?.graph?._nodes) return;
  const wanted = app.graph._nodes.filter((n) => NODES[n.type]);
  if (!wanted.length) return;
  const res = await api.fetchApi("/history?max_items=64");
  if (!res.ok) return;
  const history = Object.values(await res.json());
  const graphId = app.graph.id;
  for (const node of wanted) {
    if (node.widgets?.some((x) => x.name === WIDGET && x.imagedoctorPanel)) continue;
    for (let i = history.length - 1; i >= 0; i--) {
      const item = history[i];
      const prompt = item.prompt?.[2];
      const wfId = item.prompt?.[3]?.extra_pnginfo?.workflow?.id;
      const out = item.outputs?.[String(node.id)]?.[KEY]?.[0];
      if (!out || prompt?.[String(node.id)]?.class_type !== node.type) continue;
      if (graphId && wfId && graphId !== wfId) continue;
      show(node, out);
      break;
    }
  }
}

if (app?.registerExtension) {
  app.registerExtension({
    name: "ImageDoctor.Panels",
    beforeRegisterNodeDef: safe(function (nodeType, nodeData) {
      if (!NODES[nodeData?.name]) return;
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const r = onExecuted?.apply(this, arguments);
        safe(show).call(null, this, output?.[KEY]?.[0]);
        return r;
      };
      const onDrawForeground = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function () {
        const r = onDrawForeground?.apply(this, arguments);
        safe(placePanel).call(null, this);
        return r;
      };
    }),
    afterConfigureGraph: safe(function () {
      restoreFromHistory().catch((err) => console.warn("[ImageDoctor] no panels from history:", err));
    }),
  });
}
