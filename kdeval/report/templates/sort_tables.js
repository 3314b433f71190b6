// Click a column header to sort the table by it (again to reverse). Cells such as "12.3 (+1.0)" sort
// by their leading number; "–" (no ground truth) sorts last; other cells as text. Only textContent
// is read and rows are moved, never rebuilt from strings.
(function () {
  "use strict";
  function key(cell) {
    var text = cell.textContent.trim();
    var match = /^[-+]?\d+(\.\d+)?/.exec(text);
    return match ? { number: parseFloat(match[0]) } : { text: text };
  }
  function compare(a, b) {
    if ("number" in a && "number" in b) return a.number - b.number;
    if ("number" in a) return -1;
    if ("number" in b) return 1;
    return a.text.localeCompare(b.text);
  }
  document.querySelectorAll("table").forEach(function (table) {
    var body = table.tBodies[0];
    if (!body) return;
    table.querySelectorAll("thead th").forEach(function (th, column) {
      th.classList.add("sortable");
      th.title = "sort by this column";
      th.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") !== "descending";
        table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var order = compare(key(r1.cells[column]), key(r2.cells[column]));
          return descending ? -order : order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
