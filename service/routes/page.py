"""``GET /``: a page to upload an image and see the prediction, its attention overlay and a chosen class's map."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["page"])

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>castream</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  form { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; margin: 1rem 0; }
  figure { margin: 0; text-align: center; }
  img { width: 224px; height: 224px; object-fit: contain; background: #eee; border-radius: 4px; }
  .pair { display: flex; gap: 1rem; flex-wrap: wrap; }
  #error { color: #b00020; }
  td { padding: .15rem .75rem .15rem 0; }
  .muted { color: #666; }
  #samples { display: flex; flex-wrap: wrap; gap: .5rem; margin: .5rem 0 1rem; }
  #samples button { padding: 0; border: 2px solid transparent; border-radius: 6px; background: none; cursor: pointer; }
  #samples button:hover, #samples button:focus { border-color: #3b6fb6; }
  #samples img { width: 64px; height: 64px; display: block; }
</style>
</head>
<body>
<h1>castream</h1>
<p id="model" class="muted">loading model information...</p>
<p id="trained-on" hidden></p>
<section id="sample-row" hidden>
  <p class="muted">Try one of the images it knows (click to classify):</p>
  <div id="samples"></div>
</section>
<form id="form">
  <input type="file" id="file" accept="image/*" required>
  <label>top-k <input type="number" id="topk" value="5" min="1" max="1000" style="width: 4rem"></label>
  <label id="explain-row" hidden>explain <select id="explain"><option value="">the top class</option></select></label>
  <label><input type="checkbox" id="whole" checked> whole image</label>
  <label id="key-row" hidden>API key <input type="password" id="key" autocomplete="off"></label>
  <button type="submit" id="submit">Classify</button>
</form>
<p id="error" role="alert"></p>
<section id="result" hidden>
  <h2 id="top-label"></h2>
  <div class="pair">
    <figure><img id="original" alt="uploaded image"><figcaption>image</figcaption></figure>
    <figure id="overlay-figure"><img id="overlay" alt="attention overlay"><figcaption>attention</figcaption></figure>
    <figure id="class-figure" hidden>
      <img id="class-overlay" alt="class map overlay"><figcaption id="class-caption"></figcaption>
    </figure>
  </div>
  <p id="no-attention" class="muted" hidden>This model has no learned attention map (GAP pooling).</p>
  <table><tbody id="scores"></tbody></table>
</section>
<script>
const $ = (id) => document.getElementById(id);
const SHOWN_PX = 224; // the width and height of the page's images (CSS pixels)
// Overlays as JPEG: a blended photo is several times cheaper to encode and smaller to send than as PNG.
const OVERLAY_FORMAT = "jpeg";
let classMaps = false;
let classMapKind = null; // what the class maps are: "ca-stream", or "cam" (a GAP model's class activation maps)
fetch("v1/model").then((r) => r.json()).then((m) => {
  const about = m.name && `${m.name} (${m.backbone}, ${m.pooling}, ${m.classes.length} classes)`;
  $("model").textContent = about || "model loading";
  $("key-row").hidden = !m.auth_required;
  classMaps = Boolean(m.class_maps);
  classMapKind = m.explanation ? m.explanation.class_maps : null;
  $("explain-row").hidden = !classMaps;
  for (const label of m.classes || []) $("explain").append(new Option(label, label));
  if (m.trained_on) {
    $("trained-on").textContent = `Trained on ${m.trained_on}. It knows only these ${m.classes.length} classes: `
      + "any other picture still gets one of them.";
    $("trained-on").hidden = false;
  }
  if (m.samples) showSamples();
}).catch(() => { $("model").textContent = "model information unavailable"; });

async function showSamples() {
  const samples = await (await fetch("v1/samples")).json();
  const buttons = samples.map((sample) => {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `a ${sample.label}`;
    button.dataset.label = sample.label;
    const image = document.createElement("img");
    image.src = sample.url;
    image.alt = `sample: ${sample.label}`;
    button.append(image);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(sample.url)).blob();
      classify(new File([blob], `${sample.label}.png`, { type: "image/png" }));
    });
    return button;
  });
  $("samples").replaceChildren(...buttons);
  $("sample-row").hidden = buttons.length === 0;
}

function query() {
  const params = new URLSearchParams({ top_k: $("topk").value || "5", attention: "overlay" });
  params.set("overlay_on", $("whole").checked ? "image" : "crop");
  // The overlay at the size it is shown (the images' CSS box times the screen's pixel density), not the photo's.
  params.set("overlay_size", String(Math.ceil(SHOWN_PX * (window.devicePixelRatio || 1))));
  params.set("overlay_format", OVERLAY_FORMAT);
  if (classMaps && $("explain").value) params.append("explain", $("explain").value);
  else if (classMaps) params.set("class_maps", "true");
  return params.toString();
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (file) classify(file);
});

async function classify(file) {
  $("error").textContent = "";
  $("submit").disabled = true;
  const body = new FormData();
  body.append("file", file);
  const headers = $("key").value ? { Authorization: `Bearer ${$("key").value}` } : {};
  try {
    const response = await fetch(`classify?${query()}`, { method: "POST", body, headers });
    const data = await response.json();
    if (!response.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      throw new Error(`${response.status} ${data.code}: ${detail}`);
    }
    show(file, data.predictions[0]);
  } catch (error) {
    $("result").hidden = true;
    $("error").textContent = error.message;
  } finally {
    $("submit").disabled = false;
  }
}

function show(file, prediction) {
  const best = prediction.top_k[0];
  $("top-label").textContent = `${best.label} (${(best.score * 100).toFixed(1)}%)`;
  $("original").src = URL.createObjectURL(file);
  const overlay = prediction.attention && prediction.attention[`overlay_${OVERLAY_FORMAT}`];
  $("overlay-figure").hidden = !overlay;
  $("no-attention").hidden = Boolean(overlay);
  if (overlay) $("overlay").src = `data:image/${OVERLAY_FORMAT};base64,${overlay}`;
  const explained = prediction.explained.length ? prediction.explained[0] : best;
  const map = explained.map;
  const mapOverlay = map && map[`overlay_${OVERLAY_FORMAT}`];
  $("class-figure").hidden = !mapOverlay;
  if (mapOverlay) {
    $("class-overlay").src = `data:image/${OVERLAY_FORMAT};base64,${mapOverlay}`;
    const total = map.values.flat().reduce((a, b) => a + b, 0);
    const kind = classMapKind === "cam" ? "class activation map: evidence" : "evidence";
    $("class-caption").textContent = `${kind} for ${explained.label} (${total.toFixed(2)} logit units)`;
  }
  const rows = prediction.top_k.map((entry) => {
    const row = document.createElement("tr");
    for (const text of [entry.label, `${(entry.score * 100).toFixed(2)}%`]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $("scores").replaceChildren(...rows);
  $("result").hidden = false;
}
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    """The upload page."""
    return HTMLResponse(PAGE)
