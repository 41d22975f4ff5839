// The page at "/": a prompt, a switch between this page's GPU and the server API, the streamed
// text, tokens/s and GPU memory. Its script is /app.js (src/web/app.ts, bundled).

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cluscomp: a compressed model in the browser</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  .facts { color: #555; font-size: .9rem; margin: .1rem 0; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .4rem; }
  .row { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; margin: .5rem 0; }
  input[type=number] { width: 5rem; }
  button { font: inherit; padding: .3rem 1.2rem; }
  #output { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 4px; padding: .6rem; min-height: 6rem; background: #fafafa; }
  #status[data-state=error] { color: #b00; }
  #stats { color: #333; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>cluscomp in the browser</h1>
<p class="facts">WebGPU adapter: <span id="adapter">...</span></p>
<p class="facts">Model: <span id="model">not loaded (loads on the first run on this page's GPU)</span></p>
<textarea id="prompt" rows="3">In the beginning</textarea>
<div class="row">
  <label>max tokens <input id="max-tokens" type="number" min="1" value="32"></label>
  <label>temperature <input id="temperature" type="number" min="0" step="0.1" value="0"></label>
  <label><input id="use-server" type="checkbox"> run on the server (POST /v1/completions)</label>
  <label>API key <input id="api-key" type="password" placeholder="if the server has one"></label>
  <button id="generate">Generate</button>
</div>
<p id="status" data-state="starting">starting ...</p>
<div id="output"></div>
<p id="stats"></p>
<script type="module" src="/app.js"></script>
</body>
</html>
`;
