// fieldtrust console: passkeys (WebAuthn), live updates (Server-Sent
// Events), charts (uPlot, vendored) and in-browser ledger proof checks.
// Loaded as an external script only: the Content-Security-Policy forbids
// inline script. Everything it shows is set as text, never as HTML.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrfMeta = $('meta[name="csrf"]');
  const csrf = csrfMeta ? csrfMeta.content : "";

  // --- encoding ---
  function b64urlToBuf(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function bufToB64url(buf) {
    const b = new Uint8Array(buf);
    let s = "";
    for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function hexToBytes(h) {
    const out = new Uint8Array(h.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
    return out;
  }
  function bytesToHex(b) {
    return Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
  }
  function b64ToBytes(s) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function postJSON(url, body) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const r = await fetch(url, { method: "POST", headers, body: body === undefined ? "{}" : JSON.stringify(body), credentials: "same-origin" });
    let data = {};
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(data.error || r.status + " " + r.statusText);
    return data;
  }

  // --- WebAuthn ---
  function creationOptions(o) {
    const pk = o.publicKey;
    pk.challenge = b64urlToBuf(pk.challenge);
    pk.user.id = b64urlToBuf(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => { c.id = b64urlToBuf(c.id); });
    return { publicKey: pk };
  }
  function requestOptions(o) {
    const pk = o.publicKey;
    pk.challenge = b64urlToBuf(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => { c.id = b64urlToBuf(c.id); });
    return { publicKey: pk, mediation: o.mediation || undefined };
  }
  function attestationJSON(cred) {
    const resp = cred.response;
    return {
      id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: {
        clientDataJSON: bufToB64url(resp.clientDataJSON),
        attestationObject: bufToB64url(resp.attestationObject),
        transports: resp.getTransports ? resp.getTransports() : [],
      },
    };
  }
  function assertionJSON(cred) {
    const resp = cred.response;
    return {
      id: cred.id, rawId: bufToB64url(cred.rawId), type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: {
        clientDataJSON: bufToB64url(resp.clientDataJSON),
        authenticatorData: bufToB64url(resp.authenticatorData),
        signature: bufToB64url(resp.signature),
        userHandle: resp.userHandle ? bufToB64url(resp.userHandle) : undefined,
      },
    };
  }
  async function register(beginURL, finishURL, body) {
    const opts = await postJSON(beginURL, body);
    const cred = await navigator.credentials.create(creationOptions(opts));
    return postJSON(finishURL, attestationJSON(cred));
  }

  function setText(el, text) { if (el) el.textContent = text; }

  const loginBtn = $("#passkey-login");
  if (loginBtn) {
    loginBtn.addEventListener("click", async () => {
      setText($("#login-error"), "");
      try {
        const opts = await postJSON("/login/passkey/begin");
        const cred = await navigator.credentials.get(requestOptions(opts));
        await postJSON("/login/passkey/finish", assertionJSON(cred));
        location.assign(loginBtn.dataset.next || "/fleet");
      } catch (e) {
        setText($("#login-error"), "Login failed: " + e.message);
      }
    });
  }

  const loginLink = $("#login-link");
  if (loginLink) {
    const token = location.hash.slice(1);
    history.replaceState(null, "", "/login/link");
    postJSON("/login/link", { token }).then((r) => location.assign(r.next || "/fleet"),
      (e) => setText($("#login-link-error"), e.message));
  }

  const invite = $("#invite");
  if (invite) {
    const token = location.hash.slice(1);
    const who = $("#invite-who");
    const fail = (e) => setText($("#invite-error"), e.message);
    if (!token) {
      setText(who, "This page needs the link from your invitation (it ends in #…).");
    } else {
      postJSON("/invite/info", { token }).then((info) => {
        setText(who, "Invitation for " + info.email + ": " + info.role + " of " + info.scope + ".");
        $("#invite-passkey").hidden = false;
        if (info.certificate) {
          const b = $("#invite-certificate");
          b.hidden = false;
          setText(b, "Use my certificate " + info.certificate);
        }
      }, (e) => { setText(who, ""); fail(e); });
      $("#invite-passkey").addEventListener("click", async () => {
        try {
          const r = await register("/invite/passkey/begin", "/invite/passkey/finish", { token });
          history.replaceState(null, "", "/invite");
          location.assign(r.next || "/fleet");
        } catch (e) { fail(e); }
      });
      $("#invite-certificate").addEventListener("click", async () => {
        try {
          const r = await postJSON("/invite/certificate", { token });
          history.replaceState(null, "", "/invite");
          location.assign(r.next || "/fleet");
        } catch (e) { fail(e); }
      });
    }
  }

  const addPasskey = $("#add-passkey");
  if (addPasskey) {
    addPasskey.addEventListener("click", async () => {
      try {
        await register("/account/passkey/begin", "/account/passkey/finish");
        location.reload();
      } catch (e) { setText($("#add-passkey-result"), "Failed: " + e.message); }
    });
  }

  // --- charts ---
  const chartEl = $("#chart");
  let chart = null;
  let chartRange = null;
  async function loadChart(from, to) {
    const width = Math.max(300, chartEl.clientWidth || 800);
    const q = new URLSearchParams({ channel: chartEl.dataset.channel, from: from.toISOString(), to: to.toISOString(), points: String(Math.min(4000, Math.round(width / 2))) });
    const r = await fetch(chartEl.dataset.series + "?" + q, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const s = await r.json();
    if (!r.ok) throw new Error(s.error || r.statusText);
    chartRange = { from, to };
    const data = [s.t, s.v];
    setText($("#chart-info"), s.raw + " snapshots in range, " + s.t.length + " points drawn" + (s.t.length < s.raw ? " (min/max per bucket)" : "") + ". Drag to zoom; double-click to reset.");
    chartEl.dataset.points = String(s.t.length);
    chartEl.dataset.raw = String(s.raw);
    if (chart) { chart.setData(data); return; }
    chart = new uPlot({
      width, height: 280,
      scales: { x: { time: true } },
      series: [{}, { label: s.channel + (s.unit ? " (" + s.unit + ")" : ""), stroke: "#1f6feb", width: 1.5 }],
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 5) return;
          const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, width: 0 }, false);
          loadChart(new Date(a * 1000), new Date(b * 1000)).catch((e) => setText($("#chart-info"), e.message));
        }],
      },
    }, data, chartEl);
    chartEl.addEventListener("dblclick", () => {
      loadChart(new Date(chartEl.dataset.from), new Date(chartEl.dataset.to)).catch((e) => setText($("#chart-info"), e.message));
    });
  }
  if (chartEl && window.uPlot) {
    loadChart(new Date(chartEl.dataset.from), new Date(chartEl.dataset.to)).catch((e) => setText($("#chart-info"), "Chart failed: " + e.message));
  }

  // --- live updates ---
  function fmtValues(values) {
    return values.slice(0, 4).map((v) => v.c + " " + (Math.round(v.v * 1000) / 1000) + (v.u ? " " + v.u : "")).join("  ");
  }
  if (csrf && window.EventSource) {
    const live = $("#live");
    const es = new EventSource("/events");
    es.onopen = () => live && live.classList.add("on");
    es.onerror = () => live && live.classList.remove("on");
    es.addEventListener("logout", () => { es.close(); location.assign("/login"); });
    es.addEventListener("snapshot", (m) => {
      const s = JSON.parse(m.data);
      $$('#fleet tr[data-path]').forEach((tr) => {
        if (tr.dataset.path !== s.path) return;
        setText($("[data-seq]", tr), String(s.seq));
        setText($("[data-seen]", tr), "just now");
        setText($("[data-values]", tr), fmtValues(s.values));
        tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
      });
      const dev = $("#device");
      const seqEl = dev && $("[data-seq]", dev);
      // The page may already show what the feed announces (it was
      // rendered between the snapshot's arrival and the feed's poll).
      if (dev && dev.dataset.path === s.path && s.seq > Number(seqEl.textContent)) {
        setText(seqEl, String(s.seq));
        const cnt = $("[data-count]", dev);
        if (cnt) setText(cnt, String(Number(cnt.textContent) + 1));
        const tbody = $("#recent tbody");
        if (tbody) {
          const tr = document.createElement("tr");
          [String(s.seq), s.time, s.received, fmtValues(s.values), s.hash.slice(0, 12) + "…", String(s.ledger_index)].forEach((t) => {
            const td = document.createElement("td"); td.textContent = t; tr.appendChild(td);
          });
          tr.className = "flash live-row";
          tbody.insertBefore(tr, tbody.firstChild);
        }
        if (chart && chartRange) {
          const v = s.values.find((x) => x.c === chartEl.dataset.channel);
          if (v) {
            const t = Date.parse(s.time) / 1000;
            const d = chart.data;
            chart.setData([d[0].concat([t]), d[1].concat([v.v])]);
            chartEl.dataset.points = String(d[0].length + 1);
          }
        }
      }
    });
    es.addEventListener("status", (m) => {
      const s = JSON.parse(m.data);
      const state = s.online ? "online" : "offline";
      $$('[data-gateway]').forEach((el) => {
        if (el.dataset.gateway !== s.gateway) return;
        $$("[data-status]", el).forEach((st) => { st.className = "state " + state; st.textContent = state; });
      });
    });
  }

  // --- ledger proofs (RFC 6962 / RFC 9162 §2.1), checked here ---
  async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)); }
  function concat(...parts) {
    const n = parts.reduce((a, p) => a + p.length, 0);
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }
  const leafHashOf = (data) => sha256(concat(new Uint8Array([0]), data));
  const nodeHash = (l, r) => sha256(concat(new Uint8Array([1]), l, r));
  const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

  // RFC 9162 §2.1.3.2: the root from a leaf hash and its inclusion proof.
  async function rootFromInclusion(index, size, leaf, proof) {
    if (index >= size) throw new Error("leaf index beyond the tree");
    let fn = BigInt(index), sn = BigInt(size) - 1n, r = leaf;
    for (const p of proof) {
      if (sn === 0n) throw new Error("proof too long");
      if ((fn & 1n) === 1n || fn === sn) {
        r = await nodeHash(p, r);
        if ((fn & 1n) === 0n) { while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
      } else {
        r = await nodeHash(r, p);
      }
      fn >>= 1n; sn >>= 1n;
    }
    if (sn !== 0n) throw new Error("proof too short");
    return r;
  }

  // RFC 9162 §2.1.4.2: verify a consistency proof between two roots.
  async function verifyConsistency(size1, size2, root1, root2, proof) {
    if (size1 === size2) return proof.length === 0 && equal(root1, root2);
    if (proof.length === 0) throw new Error("empty proof");
    let path = proof.slice();
    if ((size1 & (size1 - 1)) === 0) path = [root1].concat(path); // size1 a power of two
    let fn = BigInt(size1) - 1n, sn = BigInt(size2) - 1n;
    while ((fn & 1n) === 1n) { fn >>= 1n; sn >>= 1n; }
    let fr = path[0], sr = path[0];
    for (const c of path.slice(1)) {
      if (sn === 0n) throw new Error("proof too long");
      if ((fn & 1n) === 1n || fn === sn) {
        fr = await nodeHash(c, fr); sr = await nodeHash(c, sr);
        if ((fn & 1n) === 0n) { while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; } }
      } else {
        sr = await nodeHash(sr, c);
      }
      fn >>= 1n; sn >>= 1n;
    }
    return sn === 0n && equal(fr, root1) && equal(sr, root2);
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || r.statusText);
    return d;
  }

  // verifySnapshot checks a snapshot's inclusion in the latest signed head
  // and reports each step through step(text, ok).
  async function verifySnapshot(hash, step) {
    const head = await getJSON("/ui/api/v1/ledger/head");
    step("signed tree head: size " + head.size + ", root " + head.root.slice(0, 16) + "…", true);
    const p = await getJSON("/ui/api/v1/ledger/proof/" + hash + "?size=" + head.size);
    const data = b64ToBytes(p.leaf_data);
    const tail = bytesToHex(data.slice(data.length - 32));
    step("leaf " + p.leaf_index + " records " + p.path + " with snapshot hash " + tail.slice(0, 16) + "…", tail === hash);
    if (tail !== hash) throw new Error("the leaf does not record this snapshot");
    const leaf = await leafHashOf(data);
    step("leaf hash SHA-256(0x00 ‖ leaf data) = " + bytesToHex(leaf).slice(0, 16) + "…", true);
    const root = await rootFromInclusion(p.leaf_index, p.tree_size, leaf, p.proof.map(hexToBytes));
    const ok = equal(root, hexToBytes(head.root));
    step("recomputed root from " + p.proof.length + " proof hashes: " + bytesToHex(root).slice(0, 16) + "… " + (ok ? "= the signed root" : "≠ the signed root"), ok);
    return ok;
  }

  function stepper(list) {
    list.replaceChildren();
    return (text, ok) => {
      const li = document.createElement("li");
      li.textContent = (ok ? "✓ " : "✗ ") + text;
      li.className = ok ? "ok" : "bad";
      list.appendChild(li);
    };
  }

  const vform = $("#verify-form");
  if (vform) {
    const run = async () => {
      const step = stepper($("#verify-steps"));
      const hash = $("#verify-hash").value.trim().toLowerCase();
      try {
        const ok = await verifySnapshot(hash, step);
        step(ok ? "verified in your browser: this snapshot is in the signed ledger" : "NOT verified", ok);
        $("#verify-steps").dataset.result = ok ? "verified" : "failed";
      } catch (e) { step(e.message, false); $("#verify-steps").dataset.result = "failed"; }
    };
    vform.addEventListener("submit", (e) => { e.preventDefault(); run(); });
    if ($("#verify-hash").value) run();
  }
  $$("button.verify").forEach((b) => {
    b.addEventListener("click", async () => {
      const out = b.nextElementSibling;
      const steps = [];
      try {
        const ok = await verifySnapshot(b.dataset.hash, (t, k) => steps.push((k ? "✓ " : "✗ ") + t));
        setText(out, ok ? "✓ included" : "✗ not included");
        out.className = "result " + (ok ? "ok" : "bad");
      } catch (e) { setText(out, "✗ " + e.message); out.className = "result bad"; }
      out.title = steps.join("\n");
    });
  });

  const cform = $("#consistency-form");
  if (cform) {
    cform.addEventListener("submit", async (e) => {
      e.preventDefault();
      const step = stepper($("#consistency-steps"));
      const a = $("#cons-from").selectedOptions[0], b = $("#cons-to").selectedOptions[0];
      let s1 = Number(a.value), s2 = Number(b.value), r1 = a.dataset.root, r2 = b.dataset.root;
      if (s1 > s2) { [s1, s2, r1, r2] = [s2, s1, r2, r1]; }
      try {
        const p = await getJSON("/ui/api/v1/ledger/consistency?from=" + s1 + "&to=" + s2);
        step("consistency proof " + s1 + " → " + s2 + ": " + p.proof.length + " hashes", true);
        const ok = await verifyConsistency(s1, s2, hexToBytes(r1), hexToBytes(r2), p.proof.map(hexToBytes));
        step(ok ? "the tree of size " + s2 + " extends the tree of size " + s1 + ": nothing was rewritten" : "NOT consistent", ok);
      } catch (err) { step(err.message, false); }
    });
  }
})();
