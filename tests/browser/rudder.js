// The page under test for RudderStack: @rudderstack/analytics-js (v3) as a site ships it, told
// where its data plane and its control plane are: both are ingest. The build with its plugins
// bundled: the default one fetches them from RudderStack's CDN, which a test must not need.
import { RudderAnalytics } from '@rudderstack/analytics-js/bundled'

const params = new URLSearchParams(location.search)
const writeKey = params.get('writeKey')
const api = `http://${params.get('api')}` // ingest
const beacon = params.get('beacon') === '1'

const analytics = new RudderAnalytics()
analytics.load(writeKey, api, {
  configUrl: api,
  logLevel: 'WARN',
  // The beacon queue flushes every 10 minutes by default, or when the page is hidden.
  useBeacon: beacon,
  beaconQueueOptions: { flushQueueInterval: 500 },
})
analytics.ready(() => {
  if (beacon) {
    analytics.track('Left', { n: 2 })
  } else {
    analytics.page('Docs', 'Home', { path: '/home' })
    analytics.identify('user-r', { email: ' Rudder.User@Example.com ', plan: 'gold' })
    analytics.track('Clicked', { n: 1 })
  }
  window.__result = { ok: true, queued: true }
})
setTimeout(() => {
  if (window.__result === undefined) {
    window.__result = { ok: false, error: 'the SDK was not ready in 20 s (source config?)' }
  }
}, 20000)
