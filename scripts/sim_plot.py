"""Reads ignition-sim --json lines on stdin; prints a Markdown table and writes an SVG plot of
P50, P99 and messages per invocation against load (argv[1])."""

import json
import sys

out = sys.argv[1]
rows = [json.loads(line) for line in sys.stdin if line.strip()]
pols = ["central", "random", "steal", "steal_only"]
colors = {"central": "#444", "random": "#d62728", "steal": "#1f77b4", "steal_only": "#2ca02c"}

nodes = rows[0]["nodes"]
print(f"{nodes} nodes, 2 slots each, exponential service (mean 100 ms), 0.5 ms one-way delay")
print()
head = " | ".join(f"{p} P50 / P99 ms" for p in pols)
print(f"| load | {head} | steal msgs/task | steal_only msgs/task |")
print("|---" * (len(pols) + 3) + "|")
for r in rows:
    cells = " | ".join(f"{r[p]['p50_ms']:.1f} / {r[p]['p99_ms']:.1f}" for p in pols)
    steal_msgs = r["steal"]["messages_per_task"]
    only_msgs = r["steal_only"]["messages_per_task"]
    print(f"| {r['load']} | {cells} | {steal_msgs:.1f} | {only_msgs:.1f} |")

W, H, PAD = 300, 220, 45
panels = [("P50 ms", "p50_ms"), ("P99 ms", "p99_ms"), ("messages / invocation", "messages_per_task")]
svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * W}" height="{H + 40}" '
    'font-family="sans-serif" font-size="11">',
    '<rect width="100%" height="100%" fill="white"/>',
]
loads = [r["load"] for r in rows]
x0, x1 = min(loads), max(loads)
for k, (title, key) in enumerate(panels):
    ox = k * W
    ymax = max(r[p][key] for r in rows for p in pols) * 1.05 or 1.0

    def sx(x, ox=ox):
        return ox + PAD + (x - x0) / ((x1 - x0) or 1) * (W - PAD - 10)

    def sy(y, ymax=ymax):
        return H - PAD + 20 - y / ymax * (H - PAD - 10)

    svg.append(f'<text x="{ox + W / 2}" y="14" text-anchor="middle">{title}</text>')
    svg.append(f'<line x1="{sx(x0)}" y1="{sy(0)}" x2="{sx(x1)}" y2="{sy(0)}" stroke="black"/>')
    svg.append(f'<line x1="{sx(x0)}" y1="{sy(0)}" x2="{sx(x0)}" y2="{sy(ymax)}" stroke="black"/>')
    for t in range(5):
        y = ymax * t / 4
        svg.append(f'<text x="{sx(x0) - 4}" y="{sy(y) + 4}" text-anchor="end">{y:.0f}</text>')
    for x in loads:
        svg.append(f'<text x="{sx(x)}" y="{sy(0) + 14}" text-anchor="middle">{x}</text>')
    for p in pols:
        pts = " ".join(f"{sx(r['load']):.1f},{sy(r[p][key]):.1f}" for r in rows)
        svg.append(f'<polyline fill="none" stroke="{colors[p]}" stroke-width="2" points="{pts}"/>')
    svg.append(f'<text x="{ox + W / 2}" y="{H + 8}" text-anchor="middle">load</text>')
for i, p in enumerate(pols):
    svg.append(f'<rect x="{20 + i * 110}" y="{H + 22}" width="12" height="4" fill="{colors[p]}"/>')
    svg.append(f'<text x="{36 + i * 110}" y="{H + 28}">{p}</text>')
svg.append("</svg>")
with open(out, "w") as f:
    f.write("\n".join(svg))
print()
print(f"plot: {out}")
