/*
 * uffd-copy.c: the `copy` scenario of uffd-bench written directly against the kernel uAPI,
 * issuing the same system calls in the same pattern, to measure what the Rust library adds.
 *
 * Build and run (uffd-bench -c ROUNDS does both, alternating with its own `copy`):
 *   cc -O2 -Wall -pthread -o uffd-copy-c examples/bench-c/uffd-copy.c
 *   ./uffd-copy-c [-n PAGES] [-a read|write] [-p none|same|split] [-s]
 *
 * Pattern: PAGES 4 KiB pages of private anonymous memory (MADV_NOHUGEPAGE), twice the range
 * populated and freed first, a source filled with the same pattern as uffd-bench, a
 * userfaultfd from /dev/userfaultfd (USERFAULTFD_IOC_NEW, O_CLOEXEC|O_NONBLOCK), UFFDIO_API
 * with no features, UFFDIO_REGISTER MISSING. One handler thread: poll(2) (unless -s), read(2)
 * of one message, UFFDIO_COPY of 4 KiB with wake. One faulting thread touches every page in
 * order, timed from the first touch to the last. Every word is then verified.
 * Output: scenario=copy-c pages=N faults=F ns_per_fault=X gbps=Y verify=ok
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define PAGE 4096UL
#define WORDS (PAGE / 8)

static size_t pages = 32768;
static int write_touch, spin, pin_mode; /* pin_mode: 0 none, 1 same, 2 split */
static int uffd;
static char *dst, *src;
static size_t faults;
static int handler_failed;

static uint64_t pattern(size_t page, size_t word)
{
	return ((uint64_t)page << 32 | word) ^ 0x9e3779b97f4a7c15ULL;
}

static void die(const char *what)
{
	fprintf(stderr, "uffd-copy-c: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void pin(int cpu)
{
	cpu_set_t set;
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	CPU_ZERO(&set);
	CPU_SET(cpu % (n > 0 ? n : 1), &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static char *map(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, len, MADV_NOHUGEPAGE))
		die("madvise");
	return p;
}

static void *handler(void *arg)
{
	(void)arg;
	size_t done = 0;
	struct uffd_msg msg;
	if (pin_mode)
		pin(0);
	while (done < pages) {
		if (!spin) {
			struct pollfd pfd = { .fd = uffd, .events = POLLIN };
			int r = poll(&pfd, 1, 10000);
			if (r == 0 || (r > 0 && (pfd.revents & (POLLERR | POLLHUP))))
				goto fail;
			if (r < 0) {
				if (errno == EINTR)
					continue;
				goto fail;
			}
		}
		ssize_t n = read(uffd, &msg, sizeof(msg));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			goto fail;
		}
		if (n != sizeof(msg) || msg.event != UFFD_EVENT_PAGEFAULT)
			goto fail;
		uint64_t addr = msg.arg.pagefault.address & ~(PAGE - 1);
		struct uffdio_copy c = {
			.dst = addr,
			.src = (uint64_t)(uintptr_t)src + (addr - (uint64_t)(uintptr_t)dst),
			.len = PAGE,
			.mode = 0,
			.copy = 0,
		};
		if (ioctl(uffd, UFFDIO_COPY, &c)) {
			if (errno != EEXIST)
				goto fail;
			struct uffdio_range w = { .start = addr, .len = PAGE };
			if (ioctl(uffd, UFFDIO_WAKE, &w))
				goto fail;
		} else {
			done++;
		}
		faults++;
	}
	return NULL;
fail:
	handler_failed = 1;
	{
		struct uffdio_range r = { .start = (uint64_t)(uintptr_t)dst, .len = pages * PAGE };
		ioctl(uffd, UFFDIO_UNREGISTER, &r);
	}
	return NULL;
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *toucher(void *arg)
{
	double *span = arg;
	volatile uint64_t sum = 0;
	if (pin_mode)
		pin(pin_mode == 2 ? 1 : 0);
	double t0 = now_ns();
	for (size_t i = 0; i < pages; i++) {
		volatile char *p = dst + i * PAGE;
		if (write_touch)
			*p = (char)(uint8_t)pattern(i, 0);
		else
			sum += (uint8_t)*p;
	}
	*span = now_ns() - t0;
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: uffd-copy-c [-n PAGES] [-a read|write] [-p none|same|split] [-s]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-n") && i + 1 < argc) {
			char *end;
			pages = strtoul(argv[++i], &end, 10);
			if (*end || pages < 16)
				usage();
		} else if (!strcmp(argv[i], "-a") && i + 1 < argc) {
			i++;
			if (!strcmp(argv[i], "read"))
				write_touch = 0;
			else if (!strcmp(argv[i], "write"))
				write_touch = 1;
			else
				usage();
		} else if (!strcmp(argv[i], "-p") && i + 1 < argc) {
			i++;
			if (!strcmp(argv[i], "none"))
				pin_mode = 0;
			else if (!strcmp(argv[i], "same"))
				pin_mode = 1;
			else if (!strcmp(argv[i], "split"))
				pin_mode = 2;
			else
				usage();
		} else if (!strcmp(argv[i], "-s")) {
			spin = 1;
		} else {
			usage();
		}
	}
	size_t len = pages * PAGE;

	/* Populate and free twice the range (the VM reclaims idle memory). */
	char *warm = map(2 * len);
	for (size_t i = 0; i < 2 * pages; i++)
		((volatile char *)warm)[i * PAGE] = 1;
	munmap(warm, 2 * len);

	dst = map(len);
	src = map(len);
	for (size_t i = 0; i < pages; i++)
		for (size_t j = 0; j < WORDS; j++)
			((volatile uint64_t *)(src + i * PAGE))[j] = pattern(i, j);

	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		die("open /dev/userfaultfd");
	uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	if (uffd < 0)
		die("USERFAULTFD_IOC_NEW");
	close(dev);
	struct uffdio_api api = { .api = UFFD_API, .features = 0 };
	if (ioctl(uffd, UFFDIO_API, &api))
		die("UFFDIO_API");
	struct uffdio_register reg = {
		.range = { .start = (uint64_t)(uintptr_t)dst, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");

	pthread_t h, t;
	double span = 0;
	if (pthread_create(&h, NULL, handler, NULL) || pthread_create(&t, NULL, toucher, &span)) {
		fprintf(stderr, "uffd-copy-c: pthread_create failed\n");
		return 1;
	}
	pthread_join(t, NULL);
	pthread_join(h, NULL);

	for (size_t i = 0; i < pages; i++)
		for (size_t j = 0; j < WORDS; j++) {
			uint64_t got = ((volatile uint64_t *)(dst + i * PAGE))[j];
			if (handler_failed || got != pattern(i, j)) {
				fprintf(stderr, "scenario=copy-c verify=FAILED: page %zu word %zu\n", i, j);
				return 1;
			}
		}
	printf("scenario=copy-c pages=%zu faults=%zu ns_per_fault=%.1f gbps=%.3f verify=ok\n", pages,
	       faults, span / pages, (double)len / span);
	return 0;
}
