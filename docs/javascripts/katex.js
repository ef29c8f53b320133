// Typeset the equations pymdownx.arithmatex (generic mode) leaves as \( \) and \[ \], with the vendored KaTeX:
// no network needed. Material's instant navigation swaps pages without a reload, hence document$.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
