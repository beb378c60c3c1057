// bootserve status page: keeps the server-rendered page live.
//
// Updates come from /events (server-sent events, one snapshot per change);
// if the stream fails the page polls status.json every 2 s and tries the
// stream again later. Everything shown comes from the network (host names,
// user classes, file names), so the DOM is built with textContent only.
'use strict';

(function () {
  const POLL_MS = 2000;
  const RETRY_SSE_MS = 30000;
  const STALE_MS = 5000;
  const STAGES = ['offered', 'firmware', 'script', 'kernel', 'initrd', 'booted', 'ignored'];
  const LEVELS = ['info', 'warn', 'error'];
  const LEASE_STATES = ['offered', 'bound', 'declined', 'conflict', 'released', 'expired'];

  let offset = 0; // server clock minus browser clock, ms
  let version = -1;
  let source = null;
  let pollTimer = null;
  let retryTimer = null;
  let staleTimer = null;
  let lastMessage = 0;

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null && text !== '') e.textContent = String(text);
    return e;
  }

  // Formats mirror the Go template functions in http.go.
  function dur(sec) {
    if (!(sec > 0)) sec = 0;
    if (sec >= 60) {
      const m = Math.floor(sec / 60);
      return m + 'm' + String(Math.floor(sec - 60 * m)).padStart(2, '0') + 's';
    }
    return sec < 10 ? sec.toFixed(2) + 's' : sec.toFixed(1) + 's';
  }

  function clock(t) {
    const d = new Date(t);
    if (isNaN(d)) return '';
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  }

  function xferText(x) {
    let s = x.size > 0
      ? (x.bytes / 1e6).toFixed(1) + ' / ' + (x.size / 1e6).toFixed(1) + ' MB'
      : (x.bytes / 1e6).toFixed(1) + ' MB';
    if (x.bytes_per_sec > 0) s += ' · ' + (x.bytes_per_sec / 1e6).toFixed(1) + ' MB/s';
    return s;
  }

  // rel mirrors relText in http.go: "in 59m12s", "3m07s ago".
  function rel(sec) {
    const ago = sec < 0;
    const n = Math.floor(Math.abs(sec));
    const p2 = (v) => String(v).padStart(2, '0');
    let s;
    if (n < 60) s = n + 's';
    else if (n < 3600) s = Math.floor(n / 60) + 'm' + p2(n % 60) + 's';
    else if (n < 86400) s = Math.floor(n / 3600) + 'h' + p2(Math.floor((n % 3600) / 60)) + 'm';
    else s = Math.floor(n / 86400) + 'd' + p2(Math.floor((n % 86400) / 3600)) + 'h';
    return ago ? s + ' ago' : 'in ' + s;
  }

  function stageClass(s) {
    return 'pill s-' + (STAGES.includes(s) ? s : 'none');
  }

  function serverNow() {
    return Date.now() + offset;
  }

  function machineRow(m) {
    const tr = el('tr');
    tr.dataset.key = m.key;
    tr.dataset.mac = m.mac || '';
    tr.dataset.stage = m.stage || '';

    const who = el('td');
    who.dataset.label = 'Machine';
    who.append(el('span', 'mac', m.mac || 'unknown MAC'));
    const sub = [m.hostname, m.ip].filter(Boolean).join(' · ');
    if (sub) who.append(el('span', 'sub', sub));

    const arch = el('td');
    arch.dataset.label = 'Arch';
    if (m.arch) {
      const a = el('span', 'arch', m.arch);
      if (m.arch_detail) a.title = m.arch_detail;
      arch.append(a);
    }

    const target = el('td');
    target.dataset.label = 'Target';
    if (m.target) target.append(el('span', 'target', m.target));
    if (m.user_class) target.append(el('span', 'sub', m.user_class));

    const stage = el('td');
    stage.dataset.label = 'Stage';
    stage.append(el('span', stageClass(m.stage), m.stage || 'seen'));
    if (m.reason) stage.append(el('span', 'note', m.reason));
    if (m.error) stage.append(el('span', 'note err', m.error));

    const xfer = el('td');
    xfer.dataset.label = 'Transfer';
    const x = m.transfer;
    if (x) {
      const box = el('div', 'xfer');
      box.append(el('span', 'xname', x.stage + ' · ' + x.name));
      if (x.size > 0) {
        const p = el('progress');
        p.max = 100;
        p.value = Math.min(100, Math.floor((x.bytes * 100) / x.size));
        box.append(p);
      }
      box.append(el('span', 'xnum', xferText(x)));
      xfer.append(box);
    }

    const time = el('td');
    time.dataset.label = 'Time';
    if (m.stage === 'ignored') {
      time.append(el('span', 'sub', 'seen ' + clock(m.last_seen)));
    } else {
      const e = el('span', 'elapsed');
      if (m.boot_seconds > 0) {
        e.textContent = dur(m.boot_seconds);
      } else {
        e.dataset.start = m.start;
        e.textContent = dur((serverNow() - Date.parse(m.start)) / 1000);
      }
      time.append(e);
      if (m.attempt) time.append(el('span', 'sub', 'retry ' + m.attempt));
    }

    const tl = el('td');
    tl.dataset.label = 'Timeline';
    if (m.stages && m.stages.length) {
      const ol = el('ol', 'timeline');
      for (const st of m.stages) {
        const li = el('li', STAGES.includes(st.stage) ? 't-' + st.stage : '', st.stage + ' ');
        li.append(el('span', '', '+' + dur(st.offset)));
        ol.append(li);
      }
      tl.append(ol);
    }

    tr.append(who, arch, target, stage, xfer, time, tl);
    return tr;
  }

  function leaseRow(l) {
    const tr = el('tr');
    tr.dataset.ip = l.ip;
    tr.dataset.mac = l.mac || '';
    tr.dataset.state = l.state || '';

    const addr = el('td');
    addr.dataset.label = 'Address';
    addr.append(el('span', 'mac', l.ip));

    const who = el('td');
    who.dataset.label = 'Client';
    if (l.mac) who.append(el('span', 'mac', l.mac));
    if (l.hostname) who.append(el('span', 'sub', l.hostname));

    const state = el('td');
    state.dataset.label = 'State';
    state.append(el('span', 'pill ' + (LEASE_STATES.includes(l.state) ? 'ls-' + l.state : 's-none'), l.state));

    const exp = el('td');
    exp.dataset.label = 'Expiry';
    const at = Date.parse(l.expires);
    if (l.expires && !isNaN(at)) {
      const e = el('span', 'rel', rel((at - serverNow()) / 1000));
      e.dataset.at = l.expires;
      e.title = clock(l.expires);
      exp.append(e);
    }

    const boot = el('td');
    boot.dataset.label = 'Network boot';
    if (l.boot_stage) boot.append(el('span', stageClass(l.boot_stage), l.boot_stage));
    else if (l.netboot) boot.textContent = 'yes';
    else boot.append(el('span', 'sub', 'no'));

    tr.append(addr, who, state, exp, boot);
    return tr;
  }

  // renderRows fills a table body, or says why it is empty.
  function renderRows(id, rows, empty, cols) {
    if (!rows.length) {
      const td = el('td', '', empty);
      td.colSpan = cols;
      const tr = el('tr', 'empty');
      tr.append(td);
      rows.push(tr);
    }
    $(id).replaceChildren(...rows);
  }

  function renderLeases(t) {
    $('leases-panel').hidden = !t;
    if (!t) return;
    let counts = (t.bound || 0) + ' bound · ' + (t.offered || 0) + ' offered';
    if (t.hidden) counts += ' · ' + t.hidden + ' more not shown';
    $('lease-counts').textContent = counts;
    renderRows('leases', (t.rows || []).map(leaseRow), 'No address handed out yet.', 5);
  }

  function logItem(e) {
    const li = el('li', LEVELS.includes(e.level) ? 'l-' + e.level : '');
    li.append(el('time', '', clock(e.time)), el('span', 'src', e.source));
    const who = e.mac || e.ip;
    if (who) li.append(el('span', 'who', who));
    li.append(el('span', 'msg', e.message));
    return li;
  }

  function renderList(id, entries, empty) {
    const items = (entries || []).map(logItem);
    if (!items.length) items.push(el('li', 'none', empty));
    $(id).replaceChildren(...items);
  }

  function renderHeader(c) {
    $('version').textContent = c.version || '';
    const facts = [];
    const fact = (k, v) => {
      const li = el('li');
      li.append(el('span', 'k', k), document.createTextNode(' ' + v));
      facts.push(li);
    };
    if (c.interface) fact('interface', c.interface);
    if (c.address) fact('address', c.address);
    for (const s of c.services || []) fact(s.name, (s.ports || []).join(', '));
    if (c.api_url) fact('API', c.api_url);
    else fact('rules', c.rules || 0);
    if (c.config_file) fact('config', c.config_file);
    $('facts').replaceChildren(...facts);

    const progs = (c.boot_programs || []).map((p) => {
      const li = el('li');
      li.append(el('span', 'arch', p.arch), document.createTextNode(' '), el('span', 'name', p.name));
      if (p.origin) li.append(document.createTextNode(' '), el('span', 'origin', p.origin));
      return li;
    });
    $('programs').replaceChildren(...progs);
  }

  function render(s) {
    renderHeader(s.config || {});
    const c = s.counts || {};
    $('counts').textContent = (c.booting || 0) + ' booting · ' + (c.booted || 0) + ' booted · ' + (c.ignored || 0) + ' ignored';
    renderRows('machines', (s.machines || []).map(machineRow), 'No machine has asked to boot yet.', 7);
    renderLeases(s.leases);
    renderList('events', s.events, 'Nothing yet.');
    renderList('errors', s.errors, 'No errors.');
  }

  function apply(s) {
    if (s.now) offset = Date.parse(s.now) - Date.now();
    if (s.version === version) return;
    version = s.version;
    render(s);
  }

  // tick advances the running clocks between updates.
  function tick() {
    for (const e of document.querySelectorAll('.elapsed[data-start]')) {
      e.textContent = dur((serverNow() - Date.parse(e.dataset.start)) / 1000);
    }
    for (const e of document.querySelectorAll('.rel[data-at]')) {
      e.textContent = rel((Date.parse(e.dataset.at) - serverNow()) / 1000);
    }
  }

  function setConn(state, text) {
    const c = $('conn');
    c.dataset.state = state;
    c.textContent = text;
  }

  function poll() {
    fetch('status.json', { cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))))
      .then((s) => {
        apply(s);
        setConn('polling', 'polling');
      })
      .catch(() => setConn('offline', 'server unreachable'));
  }

  function startPolling() {
    if (pollTimer) return;
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = null;
  }

  function fallBack() {
    if (source) source.close();
    source = null;
    clearTimeout(staleTimer);
    staleTimer = null;
    startPolling();
    if (!retryTimer) retryTimer = setTimeout(startStream, RETRY_SSE_MS);
  }

  function startStream() {
    retryTimer = null;
    if (!window.EventSource) {
      startPolling();
      return;
    }
    source = new EventSource('events');
    source.onmessage = (m) => {
      lastMessage = Date.now();
      clearTimeout(staleTimer);
      staleTimer = null;
      stopPolling();
      setConn('live', 'live');
      try {
        apply(JSON.parse(m.data));
      } catch (err) {
        console.error('bootserve: bad status message', err);
      }
    };
    source.onerror = () => {
      // Refused (too many streams, an error status): the browser gives up,
      // so poll, and try the stream again later. Cut (a proxy, a restart):
      // the browser reconnects by itself; poll only if that fails.
      if (source.readyState === EventSource.CLOSED) {
        fallBack();
        return;
      }
      if (!staleTimer) {
        staleTimer = setTimeout(() => {
          staleTimer = null;
          if (Date.now() - lastMessage > STALE_MS) fallBack();
        }, STALE_MS);
      }
    };
  }

  function init() {
    // The server rendered the page; convert its clocks, then go live.
    for (const e of document.querySelectorAll('.elapsed[data-start]')) {
      if (isNaN(Date.parse(e.dataset.start))) delete e.dataset.start;
    }
    for (const e of document.querySelectorAll('.rel[data-at]')) {
      if (isNaN(Date.parse(e.dataset.at))) delete e.dataset.at;
    }
    setInterval(tick, 1000);
    startStream();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
