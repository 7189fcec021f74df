// A sample Ignition function in Node.js (an ES module): greets the caller and reports where it ran.
import os from 'node:os';

export const handler = async (event, context) => {
  const name = (event && event.name) || 'world';
  console.log(`greeting ${name}`);
  return {
    message: `Hello, ${name}!`,
    kernel: os.release(),
    node: process.version,
    request_id: context.awsRequestId,
    memory_mib: context.memoryLimitInMB,
    pid: process.pid,
  };
};
