// The guest's announcements on its serial console (LABHOST-… lines), read as they arrive and
// stamped with the host time they were seen at: the campaigns aim their resets by them.
import { setTimeout as sleep } from 'node:timers/promises'
import type { RunningVm } from './driver.ts'

/** A marker line: its kind and up to two captured values. */
export interface Marker {
  at: number
  kind: string
  a: string
  b: string
}

/** A pattern with two capture groups (an empty `()` where there is one value) and the kind it marks. */
export type MarkerPattern = [RegExp, string]

export class Console {
  private vm: RunningVm
  private patterns: MarkerPattern[]
  private done = 0
  private partial = ''
  private queue: Marker[] = []

  constructor(vm: RunningVm, patterns: MarkerPattern[]) {
    this.vm = vm
    this.patterns = patterns
  }

  private poll(): void {
    const text = this.vm.serial()
    const fresh = this.partial + text.slice(this.done)
    this.done = text.length
    const lines = fresh.split('\n')
    this.partial = lines.pop() ?? ''
    const at = Date.now()
    for (const line of lines) {
      for (const [re, kind] of this.patterns) {
        const m = re.exec(line)
        if (m) this.queue.push({ at, kind, a: m[1] ?? '', b: m[2] ?? '' })
      }
    }
  }

  /** The next announcement, or null when `deadline` (ms epoch) passes or the VM is gone. */
  async next(deadline: number): Promise<Marker | null> {
    for (;;) {
      this.poll()
      const m = this.queue.shift()
      if (m) return m
      if (Date.now() >= deadline || this.vm.exited()) return null
      await sleep(25)
    }
  }

  /** Let time pass until `at` (ms epoch), handing the announcements made meanwhile to `seen`. */
  async waitUntil(at: number, seen: (m: Marker) => void): Promise<void> {
    while (Date.now() < at) {
      const m = await this.next(Math.min(at, Date.now() + 25))
      if (m) seen(m)
    }
  }

  /** The next announcement of `kind` (or of any of the kinds); the ones before it go to `seen`. */
  async until(kind: string | string[], deadline: number, seen?: (m: Marker) => void): Promise<Marker | null> {
    const kinds = Array.isArray(kind) ? kind : [kind]
    for (;;) {
      const m = await this.next(deadline)
      if (!m || kinds.includes(m.kind)) return m
      seen?.(m)
    }
  }
}
