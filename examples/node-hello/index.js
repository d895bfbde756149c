'use strict';
// A zfaas function in Node.js: answers {"name": "x"} with a greeting.

exports.handler = async (event, context) => {
  const name = (event && event.name) || 'world';
  return { message: `Hello, ${name} from Node.js!` };
};
