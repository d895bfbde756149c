'use strict';
exports.handler = async (event, context) => ({
  message: `Hello, ${event.name}!`,
  requestId: context.awsRequestId,
  remainingMs: context.getRemainingTimeInMillis(),
});
