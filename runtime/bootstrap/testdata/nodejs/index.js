'use strict';
// Handlers for the bootstrap tests.

function hello(event, context) {
  return {
    message: `Hello, ${event.name || 'world'}!`,
    requestId: context.awsRequestId,
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    memoryMB: Number(context.memoryLimitInMB),
    arn: context.invokedFunctionArn,
    remainingMs: context.getRemainingTimeInMillis(),
    custom: context.clientContext ? context.clientContext.custom : null,
    trace: process.env._X_AMZN_TRACE_ID || null,
  };
}

class ValidationError extends Error {}

exports.ok = async (event, context) => {
  console.log('handling', context.awsRequestId);
  return hello(event, context);
};

exports.promise = (event, context) =>
  new Promise((resolve) => setTimeout(() => resolve(hello(event, context)), 5));

exports.callback = (event, context, callback) => {
  setTimeout(() => callback(null, hello(event, context)), 5);
};

exports.callbackError = (event, context, callback) => {
  callback(new TypeError('wrong type'));
};

exports.sync = (event, context) => hello(event, context);

exports.fail = async (event) => {
  throw new ValidationError(`bad input: ${event.name}`);
};

exports.throwString = async () => {
  throw 'plain string';
};

exports.nested = { handler: async (event, context) => hello(event, context) };

exports.uncaught = (event, context, callback) => {
  setTimeout(() => {
    throw new RangeError('escaped the handler');
  }, 1);
};

exports.big = async (event) => 'x'.repeat(event.size);

exports.notAFunction = 42;
