// rudder-sdk-node as a partner's server uses it: gzip on (its default), so its batches go out
// labelled application/x-www-form-urlencoded by axios. Prints "flushed" or the error.
// Usage: node node-sdk.cjs WRITE_KEY http://host:port
const Analytics = require('@rudderstack/rudder-sdk-node')

const [writeKey, dataPlaneUrl] = process.argv.slice(2)
const client = new Analytics(writeKey, { dataPlaneUrl, flushAt: 2, retryCount: 0 })
client.identify({ userId: 'node-1', traits: { email: ' Node.User@Example.com ', plan: 'gold' } })
client.track({ userId: 'node-1', event: 'Bought', properties: { sku: 'x-1' } })
client.page({ anonymousId: 'anon-n', name: 'Home', properties: { path: '/' } })
client.flush().then(
  () => console.log('flushed'),
  (error) => {
    console.log(`error: ${error && error.message} ${error && error.response && error.response.status}`)
    process.exitCode = 1
  },
)
