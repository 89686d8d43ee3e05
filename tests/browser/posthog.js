// The page under test for PostHog: posthog-js as a site ships it, configured as the README says
// (api_host, and feature flags off since they are not served here). opt_out_useragent_filter
// only because posthog-js drops the events of a headless browser's user agent as a bot's.
import posthog from 'posthog-js'

const params = new URLSearchParams(location.search)
posthog.init(params.get('writeKey'), {
  api_host: `http://${params.get('api')}`,
  advanced_disable_flags: true,
  opt_out_useragent_filter: true,
})
posthog.identify('user-p', { email: ' PostHog.User@Example.com ', plan: 'team' })
posthog.capture('Clicked', { n: 3 })
window.__result = { ok: true, queued: true }
