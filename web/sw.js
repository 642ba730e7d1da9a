// Service worker: keeps the page shell (page + the sca-wasm package files) for offline use.
// Cache-first with a network update in the background. The model files are not cached here:
// the package keeps them in its own Cache API storage.
const CACHE = 'sca-page-v1'; // bump when the shell's caching changes
const SHELL = ['./', 'index.html', 'app.js', 'style.css']; // install fails without these
const EXTRA = ['bench.html', 'bench.js', 'node_modules/sca-wasm/package.json', 'node_modules/sca-wasm/index.js'];
const PKG = 'node_modules/sca-wasm/';

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL);
    await Promise.all([...EXTRA, ...(await packageFiles())].map((u) => cache.add(u).catch(() => {})));
    await self.skipWaiting();
  })());
});

// The package's own files (worker, wasm...), read from its package.json: exact names only.
async function packageFiles() {
  try {
    const pkg = await (await fetch(PKG + 'package.json')).json();
    const names = [...(pkg.files || []), pkg.main, pkg.module, pkg.browser, pkg.types]
      .filter((f) => typeof f === 'string' && !/[*?]|\/$/.test(f) && /\.\w+$/.test(f));
    return [...new Set(names)].map((f) => PKG + f.replace(/^\.\//, ''));
  } catch {
    return [];
  }
}

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const k of await caches.keys()) if (k.startsWith('sca-page-') && k !== CACHE) await caches.delete(k);
    await self.clients.claim();
  })());
});

// Model files, the manifest and the API always go to the network (or the package's cache).
function skip(req, url) {
  return req.method !== 'GET' || req.headers.has('range') || url.origin !== location.origin
    || !url.href.startsWith(self.registration.scope)
    || /\/(models|v1)\/|\/(healthz|metrics)$|\.(safetensors|gguf|onnx|bin)$|manifest\.json$/.test(url.pathname);
}

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (skip(req, url)) return;
  const nav = req.mode === 'navigate';
  const key = nav ? url.origin + url.pathname : req; // one entry per page, whatever the query
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const update = fetch(req).then(async (res) => {
      if (res.ok && res.type === 'basic' && !res.redirected) await cache.put(key, res.clone());
      return res;
    });
    const cached = await cache.match(key);
    if (cached) {
      event.waitUntil(update.catch(() => {})); // refresh for next time
      return cached;
    }
    return update;
  })());
});
