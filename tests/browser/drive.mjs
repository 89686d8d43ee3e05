// Opens a page in Debian's headless Chromium and waits for it to report; prints the result.
// Usage: node drive.mjs URL "METHOD /path,METHOD /path,..." : the requests (repeat one to want
// it answered that many times) to wait for after the page reports, up to a deadline.
import { chromium } from 'playwright-core'

const url = process.argv[2]
const wanted = (process.argv[3] || '').split(',').filter(Boolean)
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
try {
  const page = await browser.newPage()
  const requests = []
  const finished = []
  page.on('request', (r) => requests.push(`${r.method()} ${new URL(r.url()).pathname}`))
  page.on('requestfinished', (r) => finished.push(`${r.method()} ${new URL(r.url()).pathname}`))
  page.on('console', (m) => console.error(`console: ${m.text()}`))
  await page.goto(url)
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 30000 })
  const result = await page.evaluate(() => window.__result)
  // Beacons and queued sends are fire-and-forget: keep the browser open until the wanted
  // requests have been answered, or the deadline passes and the database check says what is
  // missing.
  const count = (list, item) => list.filter((r) => r === item).length
  const done = () => wanted.every((w) => count(finished, w) >= count(wanted, w))
  const deadline = Date.now() + 15000
  while (!done() && Date.now() < deadline) {
    await Promise.race([
      new Promise((resolve) => page.once('requestfinished', resolve)),
      new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now()))),
    ])
  }
  console.log(JSON.stringify({ ...result, requests }))
} finally {
  await browser.close()
}
