// Click (or Enter on) a chapter's figure to see it at full size in an overlay; click, Escape or
// the close button closes it. Figures are the images of code-cell outputs and of {figure}s.
(function () {
  "use strict";
  function open(img) {
    const overlay = document.createElement("div");
    overlay.className = "figure-zoom-overlay";
    overlay.setAttribute("role", "dialog");
    overlay.setAttribute("aria-label", "Enlarged figure; press Escape to close");
    const big = document.createElement("img");
    big.src = img.currentSrc || img.src;
    big.alt = img.alt;
    const close = document.createElement("button");
    close.className = "figure-zoom-close";
    close.type = "button";
    close.textContent = "\u00d7";
    close.setAttribute("aria-label", "Close");
    overlay.append(big, close);
    const done = () => {
      overlay.remove();
      document.removeEventListener("keydown", onKey);
      img.focus();
    };
    const onKey = (e) => { if (e.key === "Escape") done(); };
    overlay.addEventListener("click", done);
    document.addEventListener("keydown", onKey);
    document.body.append(overlay);
    close.focus();
  }
  function init() {
    const imgs = document.querySelectorAll(
      "main .cell_output img, main figure img, main div.figure img");
    imgs.forEach((img) => {
      if (img.closest("a")) return; // already a link: leave it alone
      img.classList.add("figure-zoomable");
      img.tabIndex = 0;
      img.setAttribute("role", "button");
      img.title = "Click to enlarge";
      img.addEventListener("click", () => open(img));
      img.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(img); }
      });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
