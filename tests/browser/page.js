// The page under test: analytics-next as a site ships it, told only where its CDN is. The API
// host comes from our settings endpoint (integrations["Segment.io"].apiHost), not from here.
import { AnalyticsBrowser } from '@segment/analytics-next'

const params = new URLSearchParams(location.search)
const writeKey = params.get('writeKey')
const api = params.get('api') // host:port of ingest

async function run() {
  const [analytics] = await AnalyticsBrowser.load(
    { writeKey, cdnURL: `http://${api}` },
    // keepalive: the fetch outlives the page, as sites configure it for unload-time events.
    { integrations: { 'Segment.io': { deliveryStrategy: { config: { keepalive: true } } } } },
  )
  await analytics.page('Docs', 'Home', { path: '/home' })
  await analytics.identify('user-1', { email: ' Ann.Lee@Example.com ', plan: 'pro' })
  await analytics.track('Clicked', { n: 1 })
  // What a page does on unload without the SDK: a text/plain beacon, no preflight.
  const beacon = { writeKey, type: 'track', event: 'Left', anonymousId: 'anon-beacon' }
  const queued = navigator.sendBeacon(
    `http://${api}/v1/t`,
    new Blob([JSON.stringify(beacon)], { type: 'text/plain' }),
  )
  return { queued }
}

run().then(
  (result) => { window.__result = { ok: true, ...result } },
  (error) => { window.__result = { ok: false, error: String(error) } },
)
