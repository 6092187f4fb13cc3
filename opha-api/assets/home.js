// opha Home view. Plain JS, no dependencies, served by the primary.
//
// Operators also see each poller's config status on its card (polled from
// /api/v1/pollers/config-status every CONFIG_REFRESH_MS: statuses are small and held in memory
// by the primary) and can edit and push a poller's config from the card.
//
// Flow: the token (pasted once, kept in sessionStorage) goes in the Authorization header of
// every request, never in a URL. The page loads /api/v1/summary (KPIs, peer cards, tenants),
// /api/v1/services and the latest /api/v1/events, then follows /api/v1/live (Server-Sent
// Events read from fetch(), since EventSource cannot send headers). On `lagged` or a
// reconnect it reloads the snapshot. DOM work per update is bounded: one peer card, one
// services page (PAGE_ROWS), at most MAX_EVENT_ROWS event rows; never one element per node.
'use strict';

// Same thresholds (seconds) as opha_api::home::AGE_THRESHOLDS; a test checks they agree.
const AGE_THRESHOLDS = [45, 90, 2700, 5400, 79200, 129600];
const DAEMONS_DEFAULT = ['opchartsd', 'opeventsd', 'opconfigd', 'nmis9d', 'omkd', 'ophad'];
const PAGE_ROWS = 50;
const MAX_EVENTS_HELD = 2000;
const MAX_EVENT_ROWS = 200;
const SUMMARY_REFRESH_MS = 60000;
const CONFIG_REFRESH_MS = 2000;
const TOKEN_KEY = 'opha.token';

// A heartbeat's age in words; mirrors opha_api::home::heartbeat_age_words.
function ageWords(ageMs) {
  if (ageMs === null || ageMs === undefined) return 'never';
  const s = Math.floor(Math.max(0, ageMs) / 1000);
  const [few, minute, minutes, hour, hours, day] = AGE_THRESHOLDS;
  const round = (u) => Math.max(2, Math.floor((s + Math.floor(u / 2)) / u));
  if (s < few) return 'a few seconds ago';
  if (s < minute) return 'a minute ago';
  if (s < minutes) return round(60) + ' minutes ago';
  if (s < hour) return 'an hour ago';
  if (s < hours) return round(3600) + ' hours ago';
  if (s < day) return 'a day ago';
  return round(86400) + ' days ago';
}

// Mirrors opha_api::home::peer_is_up.
function peerIsUp(stream, ageMs, staleMs) {
  const st = stream && stream.state;
  if (st === 'streaming' || st === 'catching_up' || st === 'local') return true;
  if (st === 'disconnected') return false;
  return ageMs !== null && ageMs !== undefined && ageMs <= staleMs;
}

function streamText(stream) {
  if (!stream) return 'no live link';
  switch (stream.state) {
    case 'streaming': return 'streaming';
    case 'catching_up': return 'catching up (' + fmt(stream.lag_records) + ' records behind)';
    case 'disconnected': return 'disconnected';
    case 'local': return 'this primary';
    default: return 'no live link';
  }
}

// Splits SSE text into complete messages; returns [messages, rest]. Comment lines (":")
// are keep-alives.
function parseSse(buffer) {
  const out = [];
  let at;
  while ((at = buffer.indexOf('\n\n')) >= 0) {
    const block = buffer.slice(0, at);
    buffer = buffer.slice(at + 2);
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) out.push({ event, data: data.join('\n') });
  }
  return [out, buffer];
}

function fmt(n) {
  return n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US');
}

function fmtBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = Number(n) || 0;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
  return (u === 0 ? v : v.toFixed(1)) + ' ' + units[u];
}

function nodeKey(n) {
  return n ? n.vlan + '@' + n.addr : '';
}

// A poller's config status (an /api/v1/pollers/config-status item) as the card shows it:
// the state word, a line of text, and the data attributes' values (null: attribute absent).
function configView(st) {
  const none = { state: 'unknown', text: 'no version known', applied: null, pending: null, error: null };
  if (!st) return none;
  const v = (n) => 'v' + n;
  const f = st.last_failure;
  switch (st.state) {
    case 'failed':
      return {
        state: 'failed',
        text: v(f.version) + (f.kind === 'not_active' ? ' refused (not the active primary): ' : ' rejected: ')
          + f.reason + (st.running_version !== null && st.running_version !== undefined
          ? '; runs ' + v(st.running_version) : ''),
        applied: st.running_version ?? null, pending: null, error: f.reason,
      };
    case 'pending':
      return {
        state: 'pending',
        text: v(st.desired_version) + ' pending' + (st.running_version !== null && st.running_version !== undefined
          ? ' (runs ' + v(st.running_version) + ')' : '') + (st.connected ? '' : '; poller not connected'),
        applied: st.running_version ?? null, pending: st.desired_version, error: null,
      };
    case 'applied':
      return { state: 'applied', text: v(st.running_version) + ' applied', applied: st.running_version, pending: null, error: null };
    default:
      return none;
  }
}

if (typeof module !== 'undefined') {
  module.exports = { AGE_THRESHOLDS, ageWords, peerIsUp, parseSse, streamText, nodeKey, configView };
}

if (typeof document !== 'undefined') {
  (function page() {
    const $ = (id) => document.getElementById(id);
    const el = (tag, attrs, ...kids) => {
      const e = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs || {})) {
        if (v === null || v === undefined) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else e.setAttribute(k, v);
      }
      for (const c of kids) if (c) e.append(c);
      return e;
    };

    const S = {
      token: null,
      offset: 0,            // client clock minus server clock, ms
      stale: 60000,
      daemons: DAEMONS_DEFAULT,
      peers: new Map(),     // id -> merged view
      cards: new Map(),     // id -> card element
      tenants: new Map(),   // tenant -> row data
      services: new Map(),  // key -> {tenant, poller, state}
      svcCounts: { up: 0, degraded: 0, down: 0 },
      svcPage: 0,
      events: [],           // newest first, at most MAX_EVENTS_HELD
      eventIds: new Set(),
      eventsHour: 0,
      abort: null,
      retry: 1000,
      refreshTimer: null,
      generation: 0,
      operator: false,      // the token's scope: only operators see and push configs
      configs: new Map(),   // poller -> config status
      configTimer: null,
      configPoller: null,   // the poller whose config form is open
    };

    function setKpi(id, v) {
      const e = $(id);
      e.dataset.value = String(v);
      e.textContent = fmt(v);
    }

    function showError(msg) {
      const e = $('error');
      e.textContent = msg || '';
      e.hidden = !msg;
    }

    function setLive(state, text) {
      const e = $('live-status');
      e.dataset.live = state;
      e.textContent = text;
    }

    async function api(path) {
      const r = await fetch(path, {
        headers: { Authorization: 'Bearer ' + S.token, Accept: 'application/json' },
        cache: 'no-store',
      });
      let body = null;
      try { body = await r.json(); } catch (_) { body = null; }
      if (!r.ok) {
        const err = new Error((body && body.message) || ('HTTP ' + r.status));
        err.status = r.status;
        throw err;
      }
      return body;
    }

    // A write; answers {status, body} whatever the status (the caller shows refusals).
    async function apiSend(method, path, contentType, text) {
      const r = await fetch(path, {
        method,
        headers: { Authorization: 'Bearer ' + S.token, Accept: 'application/json', 'Content-Type': contentType },
        body: text,
        cache: 'no-store',
      });
      let body = null;
      try { body = await r.json(); } catch (_) { body = null; }
      return { status: r.status, body };
    }

    // ---- peers ----
    const ROLE_ORDER = { primary: 0, poller: 1, mirror: 2 };
    function peerSort(a, b) {
      const ra = ROLE_ORDER[a.role] ?? 3, rb = ROLE_ORDER[b.role] ?? 3;
      return ra - rb || (a.peer < b.peer ? -1 : a.peer > b.peer ? 1 : 0);
    }

    function ageOf(p) {
      return p.heartbeat_ms === undefined || p.heartbeat_ms === null
        ? null : Date.now() - S.offset - p.heartbeat_ms;
    }

    function makeCard(id) {
      const lights = el('ul', { class: 'daemons' });
      for (const d of S.daemons) {
        lights.append(el('li', { class: 'light', 'data-daemon': d, 'data-state': 'missing', title: d + ': not reported', text: d }));
      }
      return el('article', { class: 'peer', id: 'peer-' + id, 'data-peer': id },
        el('header', {},
          el('h3', { class: 'peer-id', text: id }),
          el('span', { class: 'role' }),
          el('span', { class: 'region' })),
        el('dl', {},
          el('dt', { text: 'Heartbeat' }), el('dd', { class: 'heartbeat' }),
          el('dt', { text: 'Stream' }), el('dd', { class: 'stream' }),
          el('dt', { text: 'Nodes' }), el('dd', { class: 'nodes' }),
          el('dt', { class: 'config-label', text: 'Config', hidden: '' }),
          el('dd', { class: 'config', hidden: '' },
            el('span', { class: 'config-state', 'data-state': 'unknown' }),
            el('button', { class: 'config-open', type: 'button', 'data-config-poller': id, text: 'edit config' }))),
        lights);
    }

    function renderCard(p) {
      let card = S.cards.get(p.peer);
      if (!card) {
        card = makeCard(p.peer);
        S.cards.set(p.peer, card);
        placeCards();
      }
      card.dataset.role = p.role || 'unknown';
      card.querySelector('.role').textContent = p.role || '?';
      card.querySelector('.region').textContent = p.region || '';
      const st = (p.stream && p.stream.state) || 'unknown';
      card.dataset.stream = st;
      const s = card.querySelector('.stream');
      s.dataset.state = st;
      s.textContent = streamText(p.stream);
      const n = card.querySelector('.nodes');
      n.dataset.nodes = String(p.nodes_total ?? '');
      n.textContent = fmt(p.nodes_total);
      const reported = new Map((p.daemons || []).map((d) => [d.daemon, d]));
      const ul = card.querySelector('.daemons');
      for (const [name, d] of reported) {
        if (!ul.querySelector('[data-daemon="' + CSS.escape(name) + '"]')) {
          ul.append(el('li', { class: 'light', 'data-daemon': name, 'data-state': 'missing', text: name }));
        }
      }
      for (const li of ul.children) {
        const d = reported.get(li.dataset.daemon);
        li.dataset.state = d ? d.state : 'missing';
        li.title = li.dataset.daemon + ': ' + (d ? d.state + (d.detail ? ' (' + d.detail + ')' : '') : 'not reported');
      }
      tickCard(p, card);
      renderConfigState(card, p);
      applyPeerFilter(card, p);
    }

    // ---- poller configs (operators only) ----
    function renderConfigState(card, p) {
      const show = S.operator && p.role === 'poller';
      card.querySelector('dt.config-label').hidden = !show;
      const dd = card.querySelector('dd.config');
      dd.hidden = !show;
      if (!show) return;
      const view = configView(S.configs.get(p.peer));
      const span = dd.querySelector('.config-state');
      span.dataset.state = view.state;
      if (span.textContent !== view.text) span.textContent = view.text;
      for (const [attr, value] of [['configApplied', view.applied], ['configPending', view.pending], ['configError', view.error]]) {
        if (value === null || value === undefined) delete dd.dataset[attr];
        else dd.dataset[attr] = String(value);
      }
      dd.dataset.configState = view.state;
    }

    async function loadConfigs() {
      if (!S.operator) return;
      const gen = S.generation;
      let r;
      try {
        r = await api('/api/v1/pollers/config-status');
      } catch (e) {
        // 503: this server pushes no configs (nothing to show); others: try on the next tick.
        if (e.status === 503 && S.configTimer) { clearInterval(S.configTimer); S.configTimer = null; }
        return;
      }
      if (gen !== S.generation) return;
      S.configs = new Map(r.items.map((st) => [st.poller, st]));
      for (const [id, card] of S.cards) { const p = S.peers.get(id); if (p) renderConfigState(card, p); }
      showConfigStatus();
    }

    function showConfigStatus() {
      if (!S.configPoller) return;
      const view = configView(S.configs.get(S.configPoller));
      const st = S.configs.get(S.configPoller);
      const e = $('config-status');
      e.dataset.state = view.state;
      e.textContent = view.text + (st && !st.acting ? ' · this primary does not act for this poller now: pushes are refused' : '');
    }

    function configMessage(text, kind) {
      const e = $('config-result');
      e.textContent = text;
      e.dataset.result = kind;
    }

    async function openConfig(id) {
      S.configPoller = id;
      $('config-poller').textContent = id;
      $('config-poller').dataset.poller = id;
      $('config-errors').replaceChildren();
      configMessage('loading…', 'loading');
      $('config-section').hidden = false;
      $('config-section').scrollIntoView({ behavior: 'smooth', block: 'start' });
      try {
        const r = await api('/api/v1/pollers/' + encodeURIComponent(id) + '/config');
        if (S.configPoller !== id) return;
        S.configs.set(id, r.status);
        $('config-text').value = r.config || '';
        configMessage(r.config ? 'desired version ' + r.version : 'no config pushed through this primary yet: paste the poller\'s file', '');
      } catch (e) {
        configMessage('Loading the config failed: ' + e.message, 'error');
      }
      showConfigStatus();
    }

    function closeConfig() {
      S.configPoller = null;
      $('config-section').hidden = true;
    }

    async function pushConfig() {
      const id = S.configPoller;
      if (!id) return;
      const button = $('config-push');
      button.disabled = true;
      $('config-errors').replaceChildren();
      configMessage('pushing…', 'pushing');
      try {
        const r = await apiSend('PUT', '/api/v1/pollers/' + encodeURIComponent(id) + '/config',
          'application/toml', $('config-text').value);
        const b = r.body || {};
        if (r.status === 202) {
          configMessage('stored as version ' + b.version + '; pushing it to the poller', 'stored');
          if (b.status) S.configs.set(id, b.status);
        } else if (r.status === 422) {
          configMessage('refused: ' + (b.errors || []).length + ' problem(s)', 'error');
          $('config-errors').replaceChildren(...(b.errors || []).map((p) => el('li', { 'data-key': p.key },
            el('span', { class: 'key', text: p.key || '(syntax)' }),
            document.createTextNode((p.line ? ' (line ' + p.line + ', column ' + p.column + ')' : '') + ': ' + p.message))));
        } else {
          configMessage((b.message || ('HTTP ' + r.status)), 'error');
        }
      } catch (e) {
        configMessage('The push failed: ' + e.message, 'error');
      } finally {
        button.disabled = false;
      }
      for (const [pid, card] of S.cards) { const p = S.peers.get(pid); if (p) renderConfigState(card, p); }
      showConfigStatus();
      loadConfigs();
    }

    function tickCard(p, card) {
      const age = ageOf(p);
      const hb = card.querySelector('.heartbeat');
      const words = ageWords(age);
      if (hb.textContent !== words) hb.textContent = words;
      hb.dataset.heartbeatMs = String(p.heartbeat_ms ?? '');
      const up = String(peerIsUp(p.stream, age, S.stale));
      if (card.dataset.up !== up) card.dataset.up = up;
    }

    function placeCards() {
      const box = $('peers');
      const ids = [...S.peers.values()].sort(peerSort).map((p) => p.peer);
      for (const id of ids) { const c = S.cards.get(id); if (c) box.append(c); }
    }

    function applyPeerFilter(card, p) {
      const q = $('peer-filter').value.trim().toLowerCase();
      const hay = [p.peer, p.role, p.region, card.dataset.stream, card.dataset.up === 'true' ? 'up' : 'down']
        .join(' ').toLowerCase();
      card.hidden = q !== '' && !q.split(/\s+/).every((w) => hay.includes(w));
    }

    function filterPeers() {
      let shown = 0;
      for (const [id, card] of S.cards) {
        applyPeerFilter(card, S.peers.get(id) || { peer: id });
        if (!card.hidden) shown++;
      }
      $('peers-shown').textContent = shown + ' of ' + S.cards.size + ' shown';
    }

    function mergePeer(update) {
      const prev = S.peers.get(update.peer);
      const u = Object.assign({}, update);
      // A live update lists only the daemons the hub has heard of since it started: merge
      // by name, so the others keep their last known state instead of going grey.
      if (u.daemons && prev && prev.daemons) {
        const byName = new Map(prev.daemons.map((d) => [d.daemon, d]));
        for (const d of u.daemons) byName.set(d.daemon, d);
        u.daemons = [...byName.values()];
      }
      const p = Object.assign(prev || { peer: update.peer }, u);
      S.peers.set(p.peer, p);
      renderCard(p);
    }

    function recomputePeerKpis() {
      let up = 0, nodes = 0;
      const perTenant = new Map();
      for (const p of S.peers.values()) {
        if (peerIsUp(p.stream, ageOf(p), S.stale)) up++;
        if (p.role === 'poller') {
          nodes += p.nodes_total || 0;
          for (const n of p.nodes || []) {
            const t = perTenant.get(n.tenant) || { nodes: 0, pollers: [] };
            t.nodes += n.nodes;
            if (n.nodes > 0) t.pollers.push(p.peer);
            perTenant.set(n.tenant, t);
          }
        }
      }
      setKpi('kpi-peers-up', up);
      setKpi('kpi-peers-total', S.peers.size);
      setKpi('kpi-nodes-monitored', nodes);
      let changed = false;
      for (const [t, v] of perTenant) {
        const row = S.tenants.get(t);
        if (row && (row.nodes !== v.nodes || String(row.pollers) !== String(v.pollers))) {
          row.nodes = v.nodes; row.pollers = v.pollers; changed = true;
        }
      }
      if (changed || $('tenants-body').children.length !== S.tenants.size) renderTenants();
    }

    // ---- tenants ----
    function renderTenants() {
      const body = $('tenants-body');
      const rows = [...S.tenants.values()].sort((a, b) => a.tenant - b.tenant);
      body.replaceChildren(...rows.map((t) => el('tr', { 'data-tenant': String(t.tenant) },
        el('td', { text: String(t.tenant) }),
        el('td', { class: 'num nodes', 'data-value': String(t.nodes), text: fmt(t.nodes) }),
        el('td', { class: 'num events', 'data-value': String(t.events_last_hour), text: fmt(t.events_last_hour) }),
        el('td', { class: 'num bytes', 'data-value': String(t.bytes_last_hour), text: fmtBytes(t.bytes_last_hour) }),
        el('td', { class: 'pollers', text: (t.pollers || []).join(', ') }))));
      const sel = $('f-tenant');
      const have = new Set([...sel.options].map((o) => o.value));
      for (const t of rows) {
        if (!have.has(String(t.tenant))) sel.append(el('option', { value: String(t.tenant), text: 'tenant ' + t.tenant }));
      }
    }

    // ---- services ----
    function svcKey(tenant, s) { return tenant + '|' + s.service + '|' + nodeKey(s.node); }

    function sourcePollers(rec) {
      if (rec.poller) return [rec.poller];
      const t = S.tenants.get(rec.tenant);
      return (t && t.pollers) || [];
    }

    function kindText(k) {
      if (!k) return '';
      if (typeof k === 'string') return k.replace('_', ' ');
      if (k.port) return 'port ' + k.port.port;
      if (k.other !== undefined) return k.other;
      return Object.keys(k)[0];
    }

    function renderServices() {
      const want = $('svc-state').value;
      const q = $('svc-filter').value.trim().toLowerCase();
      const order = { down: 0, degraded: 1, up: 2 };
      const rows = [];
      for (const rec of S.services.values()) {
        const s = rec.state;
        if (want && s.state !== want) continue;
        if (q) {
          const hay = [s.service, nodeKey(s.node), s.node.name || '', sourcePollers(rec).join(' ')].join(' ').toLowerCase();
          if (!hay.includes(q)) continue;
        }
        rows.push(rec);
      }
      rows.sort((a, b) => (order[a.state.state] - order[b.state.state])
        || (a.state.service < b.state.service ? -1 : a.state.service > b.state.service ? 1 : 0)
        || (nodeKey(a.state.node) < nodeKey(b.state.node) ? -1 : 1));
      const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
      S.svcPage = Math.min(S.svcPage, pages - 1);
      const page = rows.slice(S.svcPage * PAGE_ROWS, (S.svcPage + 1) * PAGE_ROWS);
      $('services-body').replaceChildren(...page.map((rec) => {
        const s = rec.state;
        const pollers = sourcePollers(rec);
        const go = pollers.length
          ? el('button', { class: 'goto-peer', type: 'button', 'data-goto-peer': pollers.join(' '),
            text: pollers.length === 1 ? pollers[0] : pollers.length + ' pollers' })
          : el('span', { class: 'muted', text: 'unknown' });
        return el('tr', { 'data-service': s.service, 'data-node': nodeKey(s.node), 'data-tenant': String(rec.tenant), 'data-state': s.state },
          el('td', { class: 'state', text: s.state }),
          el('td', { text: s.service }),
          el('td', { text: kindText(s.kind) }),
          el('td', { text: (s.node.name ? s.node.name + ' ' : '') + '(' + nodeKey(s.node) + ')' }),
          el('td', { text: String(rec.tenant) }),
          el('td', { text: s.reason }),
          el('td', { text: ageWords(Date.now() - S.offset - s.since_ms) }),
          el('td', {}, go));
      }));
      const pg = $('svc-page');
      pg.dataset.page = String(S.svcPage);
      pg.dataset.pages = String(pages);
      pg.dataset.rows = String(rows.length);
      pg.textContent = 'page ' + (S.svcPage + 1) + ' of ' + pages + ' (' + fmt(rows.length) + ' checks)';
    }

    function setServiceCounts() {
      setKpi('kpi-services-up', S.svcCounts.up);
      setKpi('kpi-services-degraded', S.svcCounts.degraded);
      setKpi('kpi-services-down', S.svcCounts.down);
    }

    function applyService(msg) {
      const key = svcKey(msg.tenant, msg.state);
      const old = S.services.get(key);
      if (old) S.svcCounts[old.state.state]--;
      S.svcCounts[msg.state.state]++;
      S.services.set(key, { tenant: msg.tenant, poller: msg.poller, state: msg.state });
      setServiceCounts();
      scheduleServices();
    }

    let svcPending = false;
    function scheduleServices() {
      // Coalesce bursts: at most one re-render per animation frame.
      if (svcPending) return;
      svcPending = true;
      requestAnimationFrame(() => { svcPending = false; renderServices(); });
    }

    function gotoPeers(ids) {
      for (const c of S.cards.values()) c.removeAttribute('data-highlight');
      let first = null;
      for (const id of ids) {
        const c = S.cards.get(id);
        if (c) { c.hidden = false; c.dataset.highlight = 'true'; first = first || c; }
      }
      if (first) first.scrollIntoView({ behavior: 'smooth', block: 'center' });
    }

    // ---- events ----
    const SEV_RANK = {};
    function eventMatches(e) {
      const t = $('f-tenant').value;
      if (t && String(e.tenant) !== t) return false;
      const k = $('f-kind').value;
      if (k && e.kind !== k) return false;
      const sev = $('f-severity').value;
      if (sev && SEV_RANK[e.event.severity] < SEV_RANK[sev]) return false;
      const q = $('f-node').value.trim().toLowerCase();
      if (q) {
        const subj = e.event.subject || {};
        const hay = subj.node ? (nodeKey(subj.node) + ' ' + (subj.node.name || '')) : (subj.peer || '');
        if (!hay.toLowerCase().includes(q)) return false;
      }
      return true;
    }

    function eventRow(e, fresh) {
      const ev = e.event;
      const subj = ev.subject || {};
      const node = subj.node ? nodeKey(subj.node) : '';
      const who = subj.node ? ((subj.node.name ? subj.node.name + ' ' : '') + '(' + node + ')') : ('peer ' + (subj.peer || '?'));
      const time = new Date(ev.time_ms).toISOString().slice(11, 19);
      return el('li', {
        class: fresh ? 'ev fresh' : 'ev', 'data-event-id': ev.id, 'data-tenant': String(e.tenant),
        'data-node': node, 'data-peer': subj.peer || null, 'data-kind': e.kind,
        'data-severity': ev.severity, 'data-poller': e.poller,
      },
      el('time', { datetime: new Date(ev.time_ms).toISOString(), text: time }),
      el('span', { class: 'sev', text: ev.severity }),
      el('span', { class: 'kind', text: e.kind }),
      el('span', { class: 'subject', text: who + ' · tenant ' + e.tenant }),
      el('span', { class: 'details', text: ev.details }));
    }

    function renderEvents() {
      const rows = [];
      for (const e of S.events) {
        if (rows.length >= MAX_EVENT_ROWS) break;
        if (eventMatches(e)) rows.push(eventRow(e, false));
      }
      $('events').replaceChildren(...rows);
      eventsShown();
    }

    function eventsShown() {
      const box = $('events-shown');
      box.dataset.shown = String($('events').children.length);
      box.dataset.held = String(S.events.length);
      box.textContent = box.dataset.shown + ' shown of ' + S.events.length + ' held';
    }

    function addEvent(e, live) {
      if (S.eventIds.has(e.event.id)) return;
      S.eventIds.add(e.event.id);
      S.events.unshift(e);
      while (S.events.length > MAX_EVENTS_HELD) S.eventIds.delete(S.events.pop().event.id);
      if (live) {
        S.eventsHour++;
        setKpi('kpi-events-hour', S.eventsHour);
        const row = S.tenants.get(e.tenant);
        if (row) {
          row.events_last_hour++;
          const td = document.querySelector('#tenants-body tr[data-tenant="' + e.tenant + '"] td.events');
          if (td) { td.dataset.value = String(row.events_last_hour); td.textContent = fmt(row.events_last_hour); }
        }
        if (eventMatches(e)) {
          const list = $('events');
          list.prepend(eventRow(e, true));
          while (list.children.length > MAX_EVENT_ROWS) list.lastChild.remove();
        }
        eventsShown();
      }
    }

    // ---- snapshot ----
    async function loadSnapshot() {
      const gen = S.generation;
      const sum = await api('/api/v1/summary');
      if (gen !== S.generation) return;
      S.offset = Date.now() - sum.server_time_ms;
      S.stale = sum.stale_after_ms;
      S.daemons = sum.daemons;
      S.operator = sum.scope.role === 'operator';
      $('scope').dataset.scope = sum.scope.role === 'operator' ? 'operator' : 'tenant-' + sum.scope.tenant;
      $('scope').textContent = sum.scope.role === 'operator' ? 'operator: all tenants' : 'tenant ' + sum.scope.tenant;
      fillSelect('f-severity', sum.severities, 'at least ');
      fillSelect('f-kind', sum.event_kinds, '');
      sum.severities.forEach((s, i) => { SEV_RANK[s] = i; });
      // Cards no longer in the snapshot are removed (e.g. a tenant token's narrower view).
      const ids = new Set(sum.peers.map((p) => p.peer));
      for (const [id, c] of S.cards) if (!ids.has(id)) { c.remove(); S.cards.delete(id); S.peers.delete(id); }
      for (const p of sum.peers) {
        const q = Object.assign({}, p);
        delete q.heartbeat_age_ms; delete q.heartbeat_words; delete q.up;
        S.peers.set(p.peer, q);
        renderCard(q);
      }
      placeCards();
      filterPeers();
      S.tenants = new Map(sum.tenants.map((t) => [t.tenant, t]));
      S.eventsHour = sum.kpi.events_last_hour;
      setKpi('kpi-events-hour', S.eventsHour);
      S.svcCounts = Object.assign({}, sum.kpi.services);
      setServiceCounts();
      recomputePeerKpis();
      renderTenants();

      const svc = await api('/api/v1/services');
      if (gen !== S.generation) return;
      const keep = new Map();
      for (const s of svc.items) {
        const key = svcKey(s.tenant, s);
        const old = S.services.get(key);
        keep.set(key, { tenant: s.tenant, poller: s.poller || (old && old.poller), state: s });
      }
      S.services = keep;
      S.svcCounts = { up: 0, degraded: 0, down: 0 };
      for (const r of keep.values()) S.svcCounts[r.state.state]++;
      setServiceCounts();
      renderServices();

      const evs = await api('/api/v1/events?limit=' + MAX_EVENT_ROWS);
      if (gen !== S.generation) return;
      for (const e of evs.items.slice().reverse()) addEvent(e, false);
      S.events.sort((a, b) => b.event.time_ms - a.event.time_ms);
      renderEvents();
      $('app').dataset.ready = 'true';
    }

    function fillSelect(id, values, prefix) {
      const sel = $(id);
      if (sel.options.length > 1) return;
      for (const v of values) sel.append(el('option', { value: v, text: prefix + v }));
    }

    // ---- live stream ----
    async function follow(gen) {
      while (gen === S.generation) {
        setLive('connecting', 'connecting…');
        const ctl = new AbortController();
        S.abort = ctl;
        try {
          const r = await fetch('/api/v1/live', {
            headers: { Authorization: 'Bearer ' + S.token, Accept: 'text/event-stream' },
            signal: ctl.signal, cache: 'no-store',
          });
          if (r.status === 401 || r.status === 403) {
            setLive('refused', 'token refused');
            showError('The token was refused (' + r.status + '). Paste a valid token.');
            return;
          }
          if (!r.ok || !r.body) throw new Error('live stream: HTTP ' + r.status);
          const reader = r.body.getReader();
          const dec = new TextDecoder();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done || gen !== S.generation) break;
            buf += dec.decode(value, { stream: true });
            let msgs;
            [msgs, buf] = parseSse(buf);
            for (const m of msgs) await onMessage(m, gen);
          }
        } catch (e) {
          if (gen !== S.generation) return;
          console.warn('live stream:', e);
        }
        if (gen !== S.generation) return;
        setLive('disconnected', 'disconnected; retrying');
        await new Promise((res) => setTimeout(res, S.retry));
        S.retry = Math.min(S.retry * 2, 15000);
      }
    }

    async function onMessage(m, gen) {
      let data;
      try { data = JSON.parse(m.data); } catch (_) { return; }
      switch (m.event) {
        case 'hello':
          S.retry = 1000;
          setLive('live', 'live');
          // Anything missed while not connected comes with a fresh snapshot.
          if ($('app').dataset.ready === 'true') await loadSnapshot().catch(snapshotFailed);
          break;
        case 'event': addEvent(data, true); break;
        case 'peer': mergePeer(data); recomputePeerKpis(); break;
        case 'service': applyService(data); break;
        case 'lagged':
          setLive('lagged', 'catching up');
          await loadSnapshot().catch(snapshotFailed);
          if (gen === S.generation) setLive('live', 'live');
          break;
        default: break;
      }
    }

    function snapshotFailed(e) {
      showError('Loading the view failed: ' + e.message);
      if (e.status === 401) setLive('refused', 'token refused');
    }

    async function start() {
      stop();
      const gen = ++S.generation;
      showError('');
      $('scope').textContent = 'loading…';
      try {
        await loadSnapshot();
      } catch (e) {
        snapshotFailed(e);
        if (e.status === 401 || e.status === 403) return;
      }
      S.refreshTimer = setInterval(() => { loadSnapshot().catch(snapshotFailed); }, SUMMARY_REFRESH_MS);
      if (S.operator) {
        S.configTimer = setInterval(loadConfigs, CONFIG_REFRESH_MS);
        loadConfigs();
      }
      follow(gen);
    }

    function stop() {
      S.generation++;
      if (S.abort) S.abort.abort();
      if (S.refreshTimer) clearInterval(S.refreshTimer);
      if (S.configTimer) clearInterval(S.configTimer);
      S.abort = null;
      S.refreshTimer = null;
      S.configTimer = null;
      setLive('idle', 'not connected');
    }

    // ---- wiring ----
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $('token').value = '';
      S.token = t;
      for (const c of S.cards.values()) c.remove();
      S.cards.clear(); S.peers.clear(); S.services.clear(); S.events = []; S.eventIds.clear();
      S.configs.clear(); S.operator = false; closeConfig();
      // Another token may see fewer tenants: the filter offers only the new scope's.
      const ft = $('f-tenant');
      while (ft.options.length > 1) ft.remove(ft.options.length - 1);
      ft.value = '';
      start();
    });
    $('forget').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      S.token = null;
      stop();
      location.reload();
    });
    $('peer-filter').addEventListener('input', filterPeers);
    $('peers').addEventListener('click', (ev) => {
      const b = ev.target.closest('button.config-open');
      if (b) openConfig(b.dataset.configPoller);
    });
    $('config-push').addEventListener('click', pushConfig);
    $('config-close').addEventListener('click', closeConfig);
    $('svc-state').addEventListener('change', () => { S.svcPage = 0; renderServices(); });
    $('svc-filter').addEventListener('input', () => { S.svcPage = 0; renderServices(); });
    $('svc-prev').addEventListener('click', () => { S.svcPage = Math.max(0, S.svcPage - 1); renderServices(); });
    $('svc-next').addEventListener('click', () => { S.svcPage++; renderServices(); });
    $('services-body').addEventListener('click', (ev) => {
      const b = ev.target.closest('button.goto-peer');
      if (b) gotoPeers(b.dataset.gotoPeer.split(' '));
    });
    for (const id of ['f-tenant', 'f-severity', 'f-kind']) $(id).addEventListener('change', renderEvents);
    $('f-node').addEventListener('input', renderEvents);
    $('f-clear').addEventListener('click', () => {
      for (const id of ['f-tenant', 'f-severity', 'f-kind', 'f-node']) $(id).value = '';
      renderEvents();
    });
    // Heartbeat ages move with the clock: one pass over the cards (dozens) per second.
    setInterval(() => {
      for (const [id, card] of S.cards) { const p = S.peers.get(id); if (p) tickCard(p, card); }
      if (S.peers.size) recomputePeerKpis();
    }, 1000);

    S.token = sessionStorage.getItem(TOKEN_KEY);
    if (S.token) start();
  })();
}
