// Charts on the vendored uPlot (window.uPlot, loaded by index.html from /dashboard/static).

const PALETTE = ["#2f5bd3", "#d3562f", "#1f8a4c", "#8a3fc2", "#b7931a", "#1a8fb7", "#c23f7a"];

function width(el) {
  return Math.max(320, el.clientWidth - 4);
}

/** Replace ``el``'s chart (if any) with a new one; keeps it sized to its container. */
function mount(el, opts, data) {
  el._chart?.destroy();
  el.replaceChildren();
  const chart = new window.uPlot({ ...opts, width: width(el) }, data, el);
  el._chart = chart;
  if (!el._resize) {
    el._resize = new ResizeObserver(() => {
      el._chart?.setSize({ width: width(el), height: el._chart.height });
    });
    el._resize.observe(el);
  }
  return chart;
}

/** Accuracy and loss per round of one federated run (two y scales). */
export function roundsChart(el, rounds) {
  const x = rounds.map((r) => r.round);
  const accuracy = rounds.map((r) => r.accuracy);
  const loss = rounds.map((r) => r.loss);
  const opts = {
    height: 240,
    title: "accuracy and loss per round",
    scales: { x: { time: false }, acc: { range: [0, 1] }, loss: { auto: true } },
    axes: [
      { label: "round", values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? t : "")) },
      { scale: "acc", label: "accuracy" },
      { scale: "loss", label: "loss", side: 1, grid: { show: false } },
    ],
    series: [
      { label: "round" },
      { label: "accuracy", scale: "acc", stroke: PALETTE[0], width: 2, points: { size: 6 } },
      { label: "loss", scale: "loss", stroke: PALETTE[1], width: 2, points: { size: 6 } },
    ],
  };
  return mount(el, opts, [x, accuracy, loss]);
}

/** Requests per p50-latency bucket, one bar series per model version. */
export function latencyChart(el, edges, versions) {
  const labels = [...edges.map((e) => `≤${e}`), `>${edges[edges.length - 1]}`];
  const x = labels.map((_, i) => i);
  const bars = window.uPlot.paths.bars({ size: [0.7, 80] });
  const series = [{ label: "p50 bucket (ms)" }];
  versions.forEach((v, i) => {
    const color = PALETTE[i % PALETTE.length];
    // translucent, overlapping bars: each version's distribution stays readable
    series.push({ label: v.model_version ?? "(unknown)", stroke: color, fill: `${color}66`,
      paths: bars, points: { show: false } });
  });
  const opts = {
    height: 220,
    title: "requests by window p50 latency",
    scales: { x: { time: false, range: [-0.5, labels.length - 0.5] } },
    axes: [
      { label: "p50 latency (ms)", values: (u, ticks) => ticks.map((t) => labels[t] ?? "") },
      { label: "requests" },
    ],
    series,
  };
  return mount(el, opts, [x, ...versions.map((v) => v.histogram)]);
}
