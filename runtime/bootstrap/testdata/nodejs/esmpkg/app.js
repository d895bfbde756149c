// A .js ES module (its package.json says "type": "module").
export async function handler(event, context) {
  return {
    message: `Hello, ${event.name}!`,
    requestId: context.awsRequestId,
    remainingMs: context.getRemainingTimeInMillis(),
  };
}
