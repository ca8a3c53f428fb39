/* relay-floor: the latency floor of scenario S6 on this machine, with no broker.
 *
 * S6 measures one producer paced at a fixed rate, a broker, and one consumer that
 * acknowledges every message. On a small VM most of that latency is not the broker's
 * work but two wake-ups of sleeping threads (the broker's, then the consumer's), each
 * perhaps on a halted vCPU. This program measures exactly that path without AMQP:
 *
 *   producer thread --TCP--> relay process --TCP--> consumer thread
 *                                        <--TCP-- 21-byte "ack" per message
 *
 * The relay is a separate process with one thread blocked in epoll_wait, as a broker's
 * event loop is: it reads what the producer sent and writes it to the consumer, and
 * reads and drops the consumer's acks. The producer paces and stamps messages as
 * warren-bench does; the consumer reads as rabbitmq-c does (recv, then poll when
 * nothing is there) and writes an ack after each message. What it reports is the
 * end-to-end latency of S6's path with nothing in the middle but a forwarding process:
 * the floor under any broker's S6 figures on this machine.
 *
 * Output: a summary and one line "RESULT scenario=S broker=floor p50_us=... ..." in
 * warren-bench's format. Exit status 0 only if every message arrived once, in order.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ACK_SIZE 21 /* a basic.ack frame: 7 header + 13 payload + frame end */

static double g_rate = 1000, g_duration = 10;
static size_t g_size = 256;
static const char *g_scenario = "S6";
static int g_port;
static uint64_t g_total;     /* messages the producer sends */
static int64_t *g_latency;   /* ns, one per received message */
static uint64_t g_received, g_out_of_order;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "relay-floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static bool write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

static int connect_role(char role) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int one = 1;
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
    die("connect to the relay");
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!write_all(fd, &role, 1))
    die("write role");
  return fd;
}

/* ------------------------------------------------------------------ relay process */

/* Accepts the producer and the consumer (each names itself with its first byte), then
 * forwards producer -> consumer and drops what the consumer sends. When the producer
 * hangs up it passes the end on and reads acks until the consumer hangs up too. Never
 * returns; it also ends when its parent dies. */
static void relay_main(int listener) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1)
    _exit(1);
  int prod = -1, cons = -1, one = 1;
  while (prod < 0 || cons < 0) {
    int fd = accept(listener, NULL, NULL);
    char role;
    if (fd < 0 || read(fd, &role, 1) != 1)
      _exit(1);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *(role == 'P' ? &prod : &cons) = fd;
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = prod};
  epoll_ctl(ep, EPOLL_CTL_ADD, prod, &ev);
  ev.data.fd = cons;
  epoll_ctl(ep, EPOLL_CTL_ADD, cons, &ev);
  static char buf[128 * 1024];
  for (;;) {
    struct epoll_event got[4];
    int n = epoll_wait(ep, got, 4, -1);
    for (int i = 0; i < n; i++) {
      ssize_t r = read(got[i].data.fd, buf, sizeof buf);
      if (got[i].data.fd == cons) { /* acks are dropped */
        if (r <= 0)
          _exit(prod < 0 ? 0 : 1); /* done once the producer had finished */
        continue;
      }
      if (r <= 0) {
        shutdown(cons, SHUT_WR); /* the consumer sees the end after the last message */
        epoll_ctl(ep, EPOLL_CTL_DEL, prod, NULL);
        close(prod);
        prod = -1;
        continue;
      }
      if (!write_all(cons, buf, (size_t)r))
        _exit(1);
    }
  }
}

/* ------------------------------------------------------------------ client threads */

static void *producer_main(void *arg) {
  (void)arg;
  int fd = connect_role('P');
  char *msg = calloc(1, g_size);
  int64_t start = now_ns() + 10000000, interval = (int64_t)(1e9 / g_rate);
  for (uint64_t seq = 0; seq < g_total; seq++) {
    int64_t due = start + (int64_t)seq * interval;
    struct timespec ts = {due / 1000000000, due % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
      ;
    int64_t t = now_ns();
    memcpy(msg, &t, 8);
    memcpy(msg + 8, &seq, 8);
    if (!write_all(fd, msg, g_size))
      die("producer write");
  }
  close(fd);
  free(msg);
  return NULL;
}

/* Reads as rabbitmq-c does: a non-blocking recv, and poll only when it finds nothing. */
static ssize_t recv_like_client(int fd, char *buf, size_t len) {
  for (;;) {
    ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
    if (n >= 0 || (errno != EAGAIN && errno != EINTR))
      return n;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    poll(&p, 1, 1000);
  }
}

static void *consumer_main(void *arg) {
  int fd = *(int *)arg;
  char *msg = malloc(g_size), ack[ACK_SIZE] = {0};
  size_t have = 0;
  for (;;) {
    ssize_t n = recv_like_client(fd, msg + have, g_size - have);
    if (n <= 0)
      break;
    have += (size_t)n;
    if (have < g_size)
      continue;
    int64_t t = now_ns(), sent;
    uint64_t seq;
    memcpy(&sent, msg, 8);
    memcpy(&seq, msg + 8, 8);
    if (seq != g_received)
      g_out_of_order++;
    if (g_received < g_total)
      g_latency[g_received] = t - sent;
    g_received++;
    have = 0;
    if (!write_all(fd, ack, sizeof ack))
      break;
  }
  free(msg);
  return NULL;
}

/* ------------------------------------------------------------------ report */

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The value at quantile q: the ceil(q * n)-th smallest, as warren-bench ranks. */
static double quantile_us(const int64_t *sorted, uint64_t n, double q) {
  uint64_t rank = (uint64_t)(q * (double)n + 0.999999);
  if (rank < 1)
    rank = 1;
  return (double)sorted[rank - 1] / 1000.0;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: relay-floor [--rate R] [--duration S] [--size B] [--scenario NAME]\n"
          "Latency of producer -> relay process -> consumer over loopback TCP, with an ack\n"
          "back per message: the floor under S6 on this machine (defaults: 1000 msg/s,\n"
          "10 s, 256 B, scenario S6). Prints a summary and a RESULT line.\n");
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      return 0;
    }
    if (!v) {
      usage(stderr);
      return 2;
    }
    char *end;
    if (!strcmp(a, "--rate"))
      g_rate = strtod(v, &end);
    else if (!strcmp(a, "--duration"))
      g_duration = strtod(v, &end);
    else if (!strcmp(a, "--size"))
      g_size = (size_t)strtoul(v, &end, 10);
    else if (!strcmp(a, "--scenario"))
      g_scenario = v, end = "";
    else {
      usage(stderr);
      return 2;
    }
    if (*end || g_rate <= 0 || g_rate > 1e6 || g_duration <= 0 || g_duration > 3600 ||
        g_size < 16 || g_size > 1 << 20) {
      fprintf(stderr, "relay-floor: bad value for %s: %s\n", a, v);
      return 2;
    }
    i++;
  }
  g_total = (uint64_t)(g_rate * g_duration);
  g_latency = calloc(g_total ? g_total : 1, sizeof *g_latency);
  if (!g_latency)
    die("calloc");
  signal(SIGPIPE, SIG_IGN); /* a relay that died shows as a failed write, not a kill */

  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  if (listener < 0 || bind(listener, (struct sockaddr *)&a, alen) < 0 || listen(listener, 4) < 0 ||
      getsockname(listener, (struct sockaddr *)&a, &alen) < 0)
    die("listen on 127.0.0.1");
  g_port = ntohs(a.sin_port);
  pid_t relay = fork(); /* before any thread exists */
  if (relay < 0)
    die("fork");
  if (relay == 0)
    relay_main(listener);
  close(listener);

  int cons_fd = connect_role('C');
  pthread_t pt, ct;
  int64_t t0 = now_ns();
  if (pthread_create(&ct, NULL, consumer_main, &cons_fd) != 0 ||
      pthread_create(&pt, NULL, producer_main, NULL) != 0)
    die("pthread_create");
  pthread_join(pt, NULL);
  pthread_join(ct, NULL);
  double elapsed = (double)(now_ns() - t0) / 1e9;
  close(cons_fd); /* the relay ends when it sees this */
  int wst = 0;
  waitpid(relay, &wst, 0);

  uint64_t n = g_received < g_total ? g_received : g_total;
  qsort(g_latency, n, sizeof *g_latency, cmp_i64);
  bool ok = g_received == g_total && g_out_of_order == 0 && WIFEXITED(wst) &&
            WEXITSTATUS(wst) == 0 && n > 0;
  double p50 = n ? quantile_us(g_latency, n, 0.5) : 0, p99 = n ? quantile_us(g_latency, n, 0.99) : 0,
         p999 = n ? quantile_us(g_latency, n, 0.999) : 0,
         max = n ? (double)g_latency[n - 1] / 1000.0 : 0;
  printf("relay-floor: %llu of %llu messages at %.0f msg/s, %zu B, through a bare relay process\n",
         (unsigned long long)g_received, (unsigned long long)g_total, g_rate, g_size);
  printf("  latency     p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n", p50, p99, p999, max);
  printf("  status      %s\n", ok ? "ok" : "failed");
  printf("RESULT scenario=%s broker=floor phase=all sent=%llu received=%llu out_of_order=%llu "
         "p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f rate=%.0f size=%zu elapsed_s=%.3f "
         "status=%s\n",
         g_scenario, (unsigned long long)g_total, (unsigned long long)g_received,
         (unsigned long long)g_out_of_order, p50, p99, p999, max, g_rate, g_size, elapsed,
         ok ? "ok" : "failed");
  free(g_latency);
  return ok ? 0 : 1;
}
