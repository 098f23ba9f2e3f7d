
document.querySelectorAll("table.sortable th").forEach(function(th) {
  var i = th.cellIndex;
  th.title = "sort";
  th.addEventListener("click", function() {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "desc" ? 1 : -1;
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    function key(row) { var c = row.cells[i]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; }
    rows.sort(function(a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (isNaN(nx) || isNaN(ny)) return isNaN(nx) - isNaN(ny) || dir * x.localeCompare(y);
      return dir * (nx - ny);
    });
    rows.forEach(function(r) { body.appendChild(r); });
  });
});
