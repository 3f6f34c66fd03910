// A small, safe Markdown renderer for chat answers: fenced code, inline code, headings, lists,
// block quotes, tables, rules, bold / italic / strikethrough and http(s) / mailto links.
// Every piece of model text is HTML-escaped before any tag is added, so no markup from the
// model ever reaches the page; link targets must start with http:, https: or mailto:.
"use strict";

(function (global) {
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  const SAFE_URL = /^(https?:|mailto:)/i;

  // Inline markup. Code spans and links are swapped for placeholders first so that nothing
  // inside them (nor in an href) is touched by the emphasis rules.
  function inline(text) {
    const held = [];
    const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
    let s = text.replace(/\u0000/g, "");
    s = s.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, __, code) => hold(`<code>${escapeHtml(code.trim())}</code>`));
    s = s.replace(/\[([^\]\n]+)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g, (match, label, url) =>
      SAFE_URL.test(url)
        ? hold(`<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${emphasis(escapeHtml(label))}</a>`)
        : match,
    );
    s = s.replace(/<((?:https?:\/\/|mailto:)[^\s<>]+)>/g, (_, url) =>
      hold(`<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(url)}</a>`),
    );
    s = s.replace(/(^|[\s(])(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g, (_, before, url) =>
      before + hold(`<a href="${escapeHtml(url)}" target="_blank" rel="noopener noreferrer">${escapeHtml(url)}</a>`),
    );
    s = emphasis(escapeHtml(s));
    return s.replace(/\u0000(\d+)\u0000/g, (_, i) => held[Number(i)]);
  }

  function emphasis(s) {
    return s
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
      .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![*\w])/g, "$1<em>$2</em>")
      .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}> ?/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
  const indentOf = (line) => line.match(/^\s*/)[0].replace(/\t/g, "    ").length;

  function startsBlock(line, next) {
    return (
      FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line) ||
      (line.includes("|") && next !== undefined && TABLE_SEP.test(next) && next.includes("-"))
    );
  }

  function blocks(lines) {
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if (!line.trim()) {
        i++;
      } else if ((m = line.match(FENCE))) {
        const fence = m[1];
        const body = [];
        for (i++; i < lines.length && !lines[i].trim().startsWith(fence); i++) body.push(lines[i]);
        i++; // the closing fence (or the end of a still-streaming answer)
        const lang = m[2] ? ` class="language-${escapeHtml(m[2])}"` : "";
        out.push(`<pre><code${lang}>${escapeHtml(body.join("\n"))}</code></pre>`);
      } else if ((m = line.match(HEADING))) {
        const level = m[1].length;
        out.push(`<h${level}>${inline(m[2])}</h${level}>`);
        i++;
      } else if (RULE.test(line)) {
        out.push("<hr>");
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) body.push(lines[i].replace(QUOTE, ""));
        out.push(`<blockquote>${blocks(body)}</blockquote>`);
      } else if (ITEM.test(line)) {
        i = list(lines, i, out);
      } else if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        i = table(lines, i, out);
      } else {
        const para = [line.trim()];
        for (i++; i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1]); i++) para.push(lines[i].trim());
        out.push(`<p>${para.map(inline).join("<br>")}</p>`);
      }
    }
    return out.join("\n");
  }

  // A list starting at lines[i]: its items, each with the indented lines under it (nested lists).
  function list(lines, i, out) {
    const first = lines[i].match(ITEM);
    const base = indentOf(first[1]);
    const ordered = /\d/.test(first[2]);
    const items = [];
    while (i < lines.length) {
      const m = lines[i].match(ITEM);
      if (m && indentOf(m[1]) <= base + 1) {
        if (/\d/.test(m[2]) !== ordered) break;
        items.push([m[3]]);
        i++;
      } else if (lines[i].trim() && indentOf(lines[i]) > base) {
        items[items.length - 1].push(lines[i].slice(Math.min(indentOf(lines[i]), base + 2)));
        i++;
      } else if (!lines[i].trim() && i + 1 < lines.length && (indentOf(lines[i + 1]) > base || ITEM.test(lines[i + 1]))) {
        const next = lines[i + 1].match(ITEM);
        if (next && indentOf(next[1]) <= base + 1 && /\d/.test(next[2]) !== ordered) break;
        i++; // a blank line between items
      } else {
        break;
      }
    }
    const start = ordered && parseInt(first[2], 10) !== 1 ? ` start="${parseInt(first[2], 10)}"` : "";
    const tag = ordered ? "ol" : "ul";
    const html = items.map(([head, ...rest]) => {
      const nested = rest.length ? blocks(rest) : "";
      return `<li>${inline(head)}${nested}</li>`;
    });
    out.push(`<${tag}${start}>${html.join("")}</${tag}>`);
    return i;
  }

  function table(lines, i, out) {
    const cells = (row) => row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
    const head = cells(lines[i]);
    const aligns = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
    const cell = (tag, text, k) => `<${tag}${aligns[k] ? ` class="align-${aligns[k]}"` : ""}>${inline(text)}</${tag}>`;
    const rows = [];
    for (i += 2; i < lines.length && lines[i].includes("|") && lines[i].trim(); i++) {
      rows.push(`<tr>${cells(lines[i]).map((c, k) => cell("td", c, k)).join("")}</tr>`);
    }
    out.push(
      `<div class="table-wrap"><table><thead><tr>${head.map((c, k) => cell("th", c, k)).join("")}</tr></thead>` +
        `<tbody>${rows.join("")}</tbody></table></div>`,
    );
    return i;
  }

  function renderMarkdown(source) {
    return blocks(String(source ?? "").replace(/\r\n?/g, "\n").split("\n"));
  }

  global.renderMarkdown = renderMarkdown;
  global.escapeHtml = escapeHtml;
})(window);
