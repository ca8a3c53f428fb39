/*
 * Interop test: drives a broker with rabbitmq-c (librabbitmq), unmodified.
 *
 * Usage: rabbitmqc_basic HOST PORT
 *
 * Steps: login guest/guest, declare a queue, publish 100 messages and consume
 * them in order with manual acks, publisher confirms for 100 more, a 1 MiB
 * body through basic.get (many body frames at frame_max 131072), a topic
 * exchange with a binding, and a clean close. Prints one line per step and a
 * final "N passed, M failed" line; stops at the first failure, exit code 1.
 * Every wait is bounded (5 s per RPC, 10 s per step).
 */
#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define WARREN_NEW_RABBITMQ_HEADERS 1
#endif
#endif
#ifdef WARREN_NEW_RABBITMQ_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NMSG 100
#define BIG_SIZE (1024 * 1024)
#define STEP_SECONDS 10

static int passed;
static amqp_connection_state_t conn;
static char qname[64], cqname[64], bigqname[64], xname[64], xqname[64];

/* Prints the failure with the summary line and exits 1. */
static void fail(const char *step, const char *fmt, ...) {
  va_list ap;
  fprintf(stdout, "FAIL %s: ", step);
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fprintf(stdout, "\n%d passed, 1 failed\n", passed);
  fflush(stdout);
  exit(1);
}

static void ok(const char *step) {
  passed++;
  printf("ok %d - %s\n", passed, step);
  fflush(stdout);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Describes an RPC reply that is not NORMAL (server close or library error). */
static const char *describe(amqp_rpc_reply_t r) {
  static char buf[512];
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    return "normal";
  case AMQP_RESPONSE_NONE:
    return "missing RPC reply";
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    snprintf(buf, sizeof buf, "library error: %s", amqp_error_string2(r.library_error));
    return buf;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      amqp_connection_close_t *m = r.reply.decoded;
      snprintf(buf, sizeof buf, "connection.close %u %.*s", m->reply_code,
               (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_t *m = r.reply.decoded;
      snprintf(buf, sizeof buf, "channel.close %u %.*s", m->reply_code,
               (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else {
      snprintf(buf, sizeof buf, "server method 0x%08x", r.reply.id);
    }
    return buf;
  }
  return "unknown reply type";
}

/* Fails the step unless the last synchronous RPC succeeded. */
static void check_rpc(const char *step, const char *what) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "%s: %s", what, describe(r));
}

static void check_status(const char *step, const char *what, int status) {
  if (status != AMQP_STATUS_OK)
    fail(step, "%s: %s", what, amqp_error_string2(status));
}

static void publish(const char *step, amqp_channel_t ch, const char *exchange,
                    const char *rkey, amqp_bytes_t body) {
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  props.content_type = amqp_cstring_bytes("application/octet-stream");
  props.delivery_mode = 1;
  check_status(step, "basic.publish",
               amqp_basic_publish(conn, ch, amqp_cstring_bytes(exchange),
                                  amqp_cstring_bytes(rkey), 0, 0, &props, body));
}

/* basic.get with no-ack: returns 1 and fills *body (caller frees with
 * amqp_bytes_free) on get-ok, 0 on get-empty. */
static int get_one(const char *step, amqp_channel_t ch, const char *queue,
                   amqp_bytes_t *body) {
  amqp_rpc_reply_t r = amqp_basic_get(conn, ch, amqp_cstring_bytes(queue), 1);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "basic.get %s: %s", queue, describe(r));
  if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
    return 0;
  if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
    fail(step, "basic.get %s: unexpected method 0x%08x", queue, r.reply.id);
  amqp_message_t msg;
  r = amqp_read_message(conn, ch, &msg, 0);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "reading the message from %s: %s", queue, describe(r));
  *body = amqp_bytes_malloc_dup(msg.body);
  amqp_destroy_message(&msg);
  return 1;
}

static void declare_queue(const char *step, amqp_channel_t ch, const char *name) {
  amqp_queue_declare_ok_t *d = amqp_queue_declare(
      conn, ch, amqp_cstring_bytes(name), 0, 0, 1, 0, amqp_empty_table);
  check_rpc(step, "queue.declare");
  if (d->queue.len != strlen(name) || memcmp(d->queue.bytes, name, d->queue.len) != 0)
    fail(step, "queue.declare-ok names another queue");
  if (d->message_count != 0 || d->consumer_count != 0)
    fail(step, "new queue %s has %u messages, %u consumers", name,
         d->message_count, d->consumer_count);
}

static void step_connect(const char *host, int port) {
  const char *step = "connect and login guest/guest";
  struct timeval tv = {5, 0};
  conn = amqp_new_connection();
  amqp_socket_t *sock = amqp_tcp_socket_new(conn);
  if (!sock)
    fail(step, "amqp_tcp_socket_new failed");
  check_status(step, "socket open", amqp_socket_open_noblock(sock, host, port, &tv));
  check_status(step, "set rpc timeout", amqp_set_rpc_timeout(conn, &tv));
  amqp_rpc_reply_t r = amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                                  "guest", "guest");
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "login: %s", describe(r));
  if (amqp_get_frame_max(conn) != 131072)
    fail(step, "negotiated frame_max %d, expected 131072", amqp_get_frame_max(conn));
  amqp_channel_open(conn, 1);
  check_rpc(step, "channel.open 1");
  ok(step);
}

static void step_declare(void) {
  const char *step = "declare a queue";
  declare_queue(step, 1, qname);
  ok(step);
}

static void step_publish_consume(void) {
  const char *step = "publish 100, consume in order with manual acks";
  char buf[32];
  for (int i = 0; i < NMSG; i++) {
    snprintf(buf, sizeof buf, "message-%03d", i);
    publish(step, 1, "", qname, amqp_cstring_bytes(buf));
  }
  amqp_basic_qos(conn, 1, 0, 10, 0);
  check_rpc(step, "basic.qos");
  amqp_basic_consume_ok_t *c = amqp_basic_consume(
      conn, 1, amqp_cstring_bytes(qname), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  check_rpc(step, "basic.consume");
  amqp_bytes_t tag = amqp_bytes_malloc_dup(c->consumer_tag);

  double deadline = now() + STEP_SECONDS;
  for (int i = 0; i < NMSG; i++) {
    amqp_envelope_t env;
    struct timeval tv = {1, 0};
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
          r.library_error == AMQP_STATUS_TIMEOUT && now() < deadline) {
        i--;
        continue;
      }
      fail(step, "after %d deliveries: %s", i, describe(r));
    }
    snprintf(buf, sizeof buf, "message-%03d", i);
    if (env.message.body.len != strlen(buf) ||
        memcmp(env.message.body.bytes, buf, env.message.body.len) != 0)
      fail(step, "delivery %d: body '%.*s', expected '%s'", i,
           (int)env.message.body.len, (char *)env.message.body.bytes, buf);
    if (env.delivery_tag != (uint64_t)i + 1 || env.redelivered || env.channel != 1)
      fail(step, "delivery %d: tag %llu redelivered %d channel %u", i,
           (unsigned long long)env.delivery_tag, env.redelivered, env.channel);
    if (env.consumer_tag.len != tag.len ||
        memcmp(env.consumer_tag.bytes, tag.bytes, tag.len) != 0)
      fail(step, "delivery %d: wrong consumer tag", i);
    check_status(step, "basic.ack", amqp_basic_ack(conn, 1, env.delivery_tag, 0));
    amqp_destroy_envelope(&env);
  }
  amqp_basic_cancel(conn, 1, tag);
  check_rpc(step, "basic.cancel");
  amqp_bytes_free(tag);
  /* Every message was acked: the queue must now be empty. */
  amqp_queue_declare_ok_t *d = amqp_queue_declare(
      conn, 1, amqp_cstring_bytes(qname), 1, 0, 0, 0, amqp_empty_table);
  check_rpc(step, "passive queue.declare");
  if (d->message_count != 0 || d->consumer_count != 0)
    fail(step, "after acks the queue has %u messages, %u consumers",
         d->message_count, d->consumer_count);
  ok(step);
}

static void step_confirms(void) {
  const char *step = "confirm.select, publish 100, every one acked";
  char seen[NMSG + 1] = {0};
  char buf[32];
  amqp_channel_open(conn, 2);
  check_rpc(step, "channel.open 2");
  amqp_confirm_select(conn, 2);
  check_rpc(step, "confirm.select");
  declare_queue(step, 2, cqname);
  for (int i = 0; i < NMSG; i++) {
    snprintf(buf, sizeof buf, "confirm-%03d", i);
    publish(step, 2, "", cqname, amqp_cstring_bytes(buf));
  }
  int confirmed = 0;
  uint64_t low = 0; /* every tag <= low has been seen */
  double deadline = now() + STEP_SECONDS;
  while (confirmed < NMSG) {
    if (now() > deadline)
      fail(step, "only %d of %d confirms within %d s", confirmed, NMSG, STEP_SECONDS);
    amqp_frame_t f;
    struct timeval tv = {1, 0};
    int st = amqp_simple_wait_frame_noblock(conn, &f, &tv);
    if (st == AMQP_STATUS_TIMEOUT)
      continue;
    check_status(step, "waiting for confirms", st);
    if (f.frame_type != AMQP_FRAME_METHOD)
      fail(step, "unexpected frame type %d on channel %u", f.frame_type, f.channel);
    if (f.payload.method.id == AMQP_BASIC_NACK_METHOD)
      fail(step, "broker nacked a publish");
    if (f.payload.method.id != AMQP_BASIC_ACK_METHOD || f.channel != 2)
      fail(step, "unexpected method 0x%08x on channel %u", f.payload.method.id, f.channel);
    amqp_basic_ack_t *a = f.payload.method.decoded;
    if (a->delivery_tag < 1 || a->delivery_tag > NMSG)
      fail(step, "ack for unknown sequence number %llu",
           (unsigned long long)a->delivery_tag);
    if (a->multiple) {
      for (uint64_t t = low + 1; t <= a->delivery_tag; t++)
        if (!seen[t]) {
          seen[t] = 1;
          confirmed++;
        }
    } else {
      if (seen[a->delivery_tag])
        fail(step, "sequence number %llu acked twice",
             (unsigned long long)a->delivery_tag);
      seen[a->delivery_tag] = 1;
      confirmed++;
    }
    while (low < NMSG && seen[low + 1])
      low++;
  }
  amqp_queue_declare_ok_t *d = amqp_queue_declare(
      conn, 2, amqp_cstring_bytes(cqname), 1, 0, 0, 0, amqp_empty_table);
  check_rpc(step, "passive queue.declare");
  if (d->message_count != NMSG)
    fail(step, "confirmed queue holds %u messages, expected %d", d->message_count, NMSG);
  amqp_bytes_t body;
  if (!get_one(step, 2, cqname, &body))
    fail(step, "get-empty on the confirmed queue");
  if (body.len != 11 || memcmp(body.bytes, "confirm-000", 11) != 0)
    fail(step, "first confirmed message is '%.*s'", (int)body.len, (char *)body.bytes);
  amqp_bytes_free(body);
  ok(step);
}

static void step_big_body(void) {
  const char *step = "1 MiB body through basic.get, byte-identical";
  amqp_bytes_t big = amqp_bytes_malloc(BIG_SIZE);
  if (!big.bytes)
    fail(step, "out of memory");
  unsigned char *p = big.bytes;
  for (size_t i = 0; i < BIG_SIZE; i++)
    p[i] = (unsigned char)((i * 31 + (i >> 12) + 7) % 251);
  declare_queue(step, 1, bigqname);
  publish(step, 1, "", bigqname, big);
  amqp_bytes_t got = {0, NULL};
  double deadline = now() + STEP_SECONDS;
  while (!get_one(step, 1, bigqname, &got)) {
    if (now() > deadline)
      fail(step, "message never arrived in %s", bigqname);
    usleep(20000);
  }
  if (got.len != BIG_SIZE)
    fail(step, "got %zu bytes, expected %d", got.len, BIG_SIZE);
  if (memcmp(got.bytes, big.bytes, BIG_SIZE) != 0) {
    size_t i = 0;
    while (((unsigned char *)got.bytes)[i] == p[i])
      i++;
    fail(step, "bodies differ from byte %zu", i);
  }
  amqp_bytes_free(got);
  amqp_bytes_free(big);
  amqp_bytes_t none;
  if (get_one(step, 1, bigqname, &none))
    fail(step, "a second message was in %s", bigqname);
  ok(step);
}

static void step_exchange(void) {
  const char *step = "topic exchange declare, bind, route";
  amqp_exchange_declare(conn, 1, amqp_cstring_bytes(xname), amqp_cstring_bytes("topic"),
                        0, 0, 1, 0, amqp_empty_table);
  check_rpc(step, "exchange.declare");
  declare_queue(step, 1, xqname);
  amqp_queue_bind(conn, 1, amqp_cstring_bytes(xqname), amqp_cstring_bytes(xname),
                  amqp_cstring_bytes("order.*.created"), amqp_empty_table);
  check_rpc(step, "queue.bind");
  publish(step, 1, xname, "order.eu.deleted", amqp_cstring_bytes("not routed"));
  publish(step, 1, xname, "order.eu.created", amqp_cstring_bytes("routed"));
  publish(step, 1, xname, "order.created", amqp_cstring_bytes("not routed either"));
  amqp_bytes_t body;
  double deadline = now() + STEP_SECONDS;
  while (!get_one(step, 1, xqname, &body)) {
    if (now() > deadline)
      fail(step, "routed message never arrived in %s", xqname);
    usleep(20000);
  }
  if (body.len != 6 || memcmp(body.bytes, "routed", 6) != 0)
    fail(step, "got '%.*s', expected 'routed'", (int)body.len, (char *)body.bytes);
  amqp_bytes_free(body);
  if (get_one(step, 1, xqname, &body))
    fail(step, "unexpected second message '%.*s'", (int)body.len, (char *)body.bytes);
  ok(step);
}

static void step_close(void) {
  const char *step = "delete entities, clean close";
  const char *queues[] = {qname, cqname, bigqname, xqname};
  for (size_t i = 0; i < sizeof queues / sizeof *queues; i++) {
    amqp_queue_delete(conn, 1, amqp_cstring_bytes(queues[i]), 0, 0);
    check_rpc(step, "queue.delete");
  }
  amqp_exchange_delete(conn, 1, amqp_cstring_bytes(xname), 0);
  check_rpc(step, "exchange.delete");
  amqp_rpc_reply_t r = amqp_channel_close(conn, 2, AMQP_REPLY_SUCCESS);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "channel.close 2: %s", describe(r));
  r = amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "channel.close 1: %s", describe(r));
  r = amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  if (r.reply_type != AMQP_RESPONSE_NORMAL)
    fail(step, "connection.close: %s", describe(r));
  check_status(step, "destroy connection", amqp_destroy_connection(conn));
  ok(step);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[2]);
  if (port <= 0 || port > 65535) {
    fprintf(stderr, "bad port '%s'\n", argv[2]);
    return 2;
  }
  unsigned id = (unsigned)getpid() ^ (unsigned)time(NULL);
  snprintf(qname, sizeof qname, "interop-c-%08x", id);
  snprintf(cqname, sizeof cqname, "interop-c-confirm-%08x", id);
  snprintf(bigqname, sizeof bigqname, "interop-c-big-%08x", id);
  snprintf(xname, sizeof xname, "interop-c-x-%08x", id);
  snprintf(xqname, sizeof xqname, "interop-c-xq-%08x", id);

  step_connect(argv[1], port);
  step_declare();
  step_publish_consume();
  step_confirms();
  step_big_body();
  step_exchange();
  step_close();
  printf("%d passed, 0 failed\n", passed);
  return 0;
}
