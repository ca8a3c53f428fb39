#!/usr/bin/env node
// Acceptance check: the amqplib Node client (npm package "amqplib") against the broker.
//
// Usage: node amqplib_check.js [AMQP_URL | PORT]   (after `npm install` in this folder)
// The broker URL comes from the first argument (a full URL or a bare port number),
// else from $AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/.
// The broker must already be running; this script starts nothing.
//
// Publishes 100 persistent messages to a durable queue on a confirm channel and waits
// for every confirm (waitForConfirms plus each publish's own callback), then consumes
// them with manual acks on a second channel: exact bodies, in order, none redelivered,
// and the queue is empty afterwards. Exit status 0 only if every check passed.
'use strict';
const amqp = require('amqplib');

const N = 100;
const DEADLINE_MS = 30000;
const arg = process.argv[2] || process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
const URL = /^\d+$/.test(arg) ? `amqp://guest:guest@127.0.0.1:${arg}/` : arg;
const failures = [];

function check(cond, what) {
  console.log((cond ? 'ok   ' : 'FAIL ') + what);
  if (!cond) failures.push(what);
}

function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function main() {
  const watchdog = setTimeout(() => {
    console.log(`FAIL overall deadline of ${DEADLINE_MS / 1000}s exceeded`);
    process.exit(2);
  }, DEADLINE_MS);
  console.log(`broker: ${URL}  amqplib ${require('amqplib/package.json').version}`);
  const conn = await amqp.connect(URL);
  const sp = conn.connection.serverProperties;
  console.log(`server product: '${sp.product}' version '${sp.version}'`);
  const queue = `acc.amqplib.${process.pid}`;

  // --- publish on a confirm channel
  const pub = await conn.createConfirmChannel();
  const ok = await pub.assertQueue(queue, { durable: true });
  check(ok.queue === queue && ok.messageCount === 0, `declared ${queue}: ${JSON.stringify(ok)}`);
  const sent = [];
  const acked = [];
  for (let i = 0; i < N; i++) {
    const body = `message ${i} ` + 'x'.repeat(i);   // bodies of different sizes
    sent.push(body);
    pub.sendToQueue(queue, Buffer.from(body), { persistent: true, messageId: String(i) },
      (err) => acked.push(err ? `nack ${i}` : i));
  }
  await withTimeout(pub.waitForConfirms(), 10000, 'waitForConfirms');
  check(true, `waitForConfirms resolved for ${N} publishes`);
  check(acked.length === N && acked.every((v, i) => v === i),
    `every publish callback got an ack, in order (${acked.length} callbacks, ` +
    `nacks: ${acked.filter((v) => typeof v !== 'number').length})`);
  const after = await pub.checkQueue(queue);
  check(after.messageCount === N, `checkQueue reports ${N} ready (got ${after.messageCount})`);

  // --- consume with manual acks on another channel
  const sub = await conn.createChannel();
  await sub.prefetch(10);
  const got = [];
  let redelivered = 0;
  const done = new Promise((resolve) => {
    sub.consume(queue, (msg) => {
      got.push(msg.content.toString());
      if (msg.fields.redelivered) redelivered++;
      sub.ack(msg);
      if (got.length === N) resolve();
    }, { noAck: false });
  });
  await withTimeout(done, 10000, `consuming ${N} messages`).catch((e) => check(false, e.message));
  check(got.length === N, `consumed ${got.length} of ${N} messages`);
  check(got.every((b, i) => b === sent[i]), 'exact bodies, in publish order');
  check(redelivered === 0, `none redelivered (${redelivered})`);
  await sub.close();                     // acks are sent before channel.close
  const end = await pub.checkQueue(queue);
  check(end.messageCount === 0 && end.consumerCount === 0,
    `queue empty with no consumers after acks (${JSON.stringify(end)})`);
  const del = await pub.deleteQueue(queue);
  check(del.messageCount === 0, `deleted ${queue}: ${JSON.stringify(del)}`);
  await pub.close();
  await conn.close();
  clearTimeout(watchdog);
  console.log(`RESULT: ${failures.length ? 'FAIL' : 'PASS'} (${failures.length} failed check(s))`);
  return failures.length ? 1 : 0;
}

main().then((code) => process.exit(code), (err) => {
  console.log(`FAIL unexpected error: ${err.stack || err}`);
  process.exit(1);
});
