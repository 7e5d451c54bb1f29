// volnb site: click (or press Enter on) a column header of a table.volnb-table to sort its rows; again to reverse.
// Cells carry their exact value in data-sort (numbers) or are compared as text; empty cells go last.
(function () {
  function key(cell) {
    if (!cell) return "";
    const v = cell.getAttribute("data-sort");
    return v !== null ? v : cell.textContent.trim();
  }
  function sortBy(table, col, th) {
    const body = table.tBodies[0];
    if (!body) return;
    const asc = th.getAttribute("aria-sort") !== "ascending";
    const rows = Array.from(body.rows);
    const numeric = rows.every(r => { const k = key(r.cells[col]); return k === "" || !isNaN(Number(k)); });
    rows.sort((a, b) => {
      const x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === "" || y === "") return (x === "") - (y === "");
      const c = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      return asc ? c : -c;
    });
    for (const h of th.parentNode.cells) h.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    rows.forEach(r => body.appendChild(r));
  }
  function init() {
    document.querySelectorAll("table.volnb-table").forEach(table => {
      if (table.dataset.sortable || !table.tHead) return;
      table.dataset.sortable = "1";
      Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
        th.tabIndex = 0;
        th.title = "Sort by this column";
        th.addEventListener("click", () => sortBy(table, i, th));
        th.addEventListener("keydown", e => {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, i, th); }
        });
      });
    });
  }
  if (typeof document$ !== "undefined") document$.subscribe(init);
  else document.addEventListener("DOMContentLoaded", init);
})();
