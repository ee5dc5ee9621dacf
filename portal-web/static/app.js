// portal-web's only script: countdowns, the QR code followed live (Server-Sent Events), the
// focus (Decline by default; the result once final), and "select all" in the device list. The
// pages work without it (reload to see a new state). Served from /static, as the
// Content-Security-Policy requires.
'use strict';
(function () {
  function pad(n) { return n < 10 ? '0' + n : String(n); }

  // Countdowns arrive as seconds left (the browser's clock may be off); each becomes a
  // deadline on this clock once.
  function tick() {
    document.querySelectorAll('[data-countdown]').forEach(function (el) {
      if (!el.dataset.deadline) {
        el.dataset.deadline = String(Date.now() + Number(el.dataset.countdown) * 1000);
      }
      var left = Math.max(0, Math.round((Number(el.dataset.deadline) - Date.now()) / 1000));
      el.textContent = Math.floor(left / 60) + ':' + pad(left % 60);
    });
  }

  // Decline when a phone scanned; the result once the code is used up.
  function focusFor(root) {
    var target = root.querySelector('[data-default-focus]') || root.querySelector('[data-result]');
    if (target) { target.focus(); }
  }

  function follow(state, announcer) {
    if (!state.dataset.events || state.querySelector('[data-final]')) { return; }
    var source = new EventSource(state.dataset.events);
    source.addEventListener('state', function (event) {
      // The server rendered and escaped this HTML (maud); the device's name is text in it.
      // Parsed in a template: inert until it is in the page.
      var template = document.createElement('template');
      template.innerHTML = event.data;
      var next = template.content.firstElementChild;
      var shown = state.firstElementChild;
      if (!next || (shown && shown.dataset.key === next.dataset.key)) { return; }
      state.replaceChildren(template.content);
      if (announcer) { announcer.textContent = next.dataset.announce || ''; }
      tick();
      focusFor(state);
      if (next.hasAttribute('data-final')) { source.close(); }
    });
    source.addEventListener('problem', function (event) {
      source.close();
      var template = document.createElement('template');
      template.innerHTML = event.data;
      state.appendChild(template.content);
    });
  }

  function selectAll() {
    var all = document.getElementById('select-all');
    if (!all) { return; }
    all.hidden = false;
    all.addEventListener('change', function () {
      document.querySelectorAll('input[name="device"]').forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    var state = document.getElementById('qr-state');
    if (state) {
      var shown = state.querySelector('[data-default-focus]');
      if (shown) { shown.focus(); }
      follow(state, document.getElementById('qr-announce'));
    }
    selectAll();
    tick();
    setInterval(tick, 1000);
  });
})();
