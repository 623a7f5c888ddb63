// Progress of a long step: a redrawn bar on a terminal, plain lines (every 10 %) otherwise, so
// logs on a stick or in CI stay readable.
export type Progress = (done: number, total: number) => void

export interface ProgressSink {
  isTTY?: boolean
  columns?: number
  write(s: string): unknown
}

const MiB = 1 << 20

function rate(bytes: number, started: number): string {
  const s = (Date.now() - started) / 1000
  return s > 0 ? `${(bytes / MiB / s).toFixed(1)} MiB/s` : ''
}

/** A progress reporter for one step; call it with bytes done and total, it decides what to print. */
export function createProgress(label: string, sink: ProgressSink): Progress {
  const started = Date.now()
  let lastDecile = -1
  let lastDraw = 0
  return (done, total) => {
    const pct = total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : 0
    if (sink.isTTY) {
      const now = Date.now()
      if (done < total && now - lastDraw < 100) return
      lastDraw = now
      const width = Math.max(10, Math.min(40, (sink.columns ?? 80) - label.length - 40))
      const filled = Math.round((width * pct) / 100)
      sink.write(
        `\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(pct).padStart(3)}% ${(done / MiB).toFixed(0)}/${(total / MiB).toFixed(0)} MiB ${rate(done, started)}\x1b[K${done >= total ? '\n' : ''}`,
      )
      return
    }
    const decile = Math.floor(pct / 10)
    if (decile === lastDecile) return
    lastDecile = decile
    sink.write(`${label}: ${pct}% (${(done / MiB).toFixed(0)} of ${(total / MiB).toFixed(0)} MiB, ${rate(done, started)})\n`)
  }
}
