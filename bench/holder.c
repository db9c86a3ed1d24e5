/*
 * Storm-shaped stand-in processes for the benchmarks, cheap enough to start 20 a second.
 *
 * One binary plays three parts, chosen by its argv:
 *
 * - LogWriter: an argv that contains org.apache.storm.LogWriter. It forks, the child
 *   execs this binary with the argv after that class (the worker's argv, as Storm's
 *   LogWriter starts it), and the parent writes the child's pid and a newline to
 *   stdout. SIGTERM, SIGINT and SIGHUP are forwarded to the worker. It exits with
 *   the worker's exit code, or 128 + the signal that killed the worker, as the
 *   LogWriter's subprocess relay does.
 * - idle: argv[1] is "idle" and argv[2] a count N. It forks N children that pause
 *   until killed, writes their pids one a line to stdout, and waits for them.
 * - storm: argv[1] is "storm", argv[2] a count N and argv[3] a time T in
 *   milliseconds. It forks N short-lived processes, paced evenly over T ms, and
 *   reaps them. Each child exits 0 at once, or with argv[4] "exec" first execs this
 *   binary as "exit". It then writes "<processes forked> <elapsed ms>" to stdout.
 * - exit: argv[1] is "exit". It exits 0 at once.
 * - worker: any other argv, which is ignored, so it may be a Storm worker's argv.
 *   It waits for SIGTERM, then starts a thread named "SIGTERM handler" (the name
 *   HotSpot gives the thread that runs a JVM's shutdown), which sleeps
 *   BENCH_SHUTDOWN_DELAY_MS milliseconds (default 0) and exits the process with 143.
 *
 * Every process the holder forks sets PR_SET_PDEATHSIG to SIGKILL, which execve keeps,
 * so a worker dies with its LogWriter and an idle process with its holder.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char LOGWRITER_CLASS[] = "org.apache.storm.LogWriter";

static volatile sig_atomic_t worker_pid;

static void forward_signal(int signum) {
    if (worker_pid > 0) {
        kill(worker_pid, signum);
    }
}

static void die_with_parent(pid_t parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(137); /* the parent died before PR_SET_PDEATHSIG took effect */
    }
}

static void *shutdown_thread(void *unused) {
    (void)unused;
    prctl(PR_SET_NAME, "SIGTERM handler");
    const char *text = getenv("BENCH_SHUTDOWN_DELAY_MS");
    long delay_ms = text != NULL ? strtol(text, NULL, 10) : 0;
    if (delay_ms > 0) {
        struct timespec delay = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {
        }
    }
    _exit(143);
    return NULL;
}

static int run_worker(void) {
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    int signum = 0;
    sigwait(&term, &signum);
    pthread_t thread;
    if (pthread_create(&thread, NULL, shutdown_thread, NULL) != 0) {
        _exit(143);
    }
    pthread_join(thread, NULL);
    return 143;
}

static int run_logwriter(char **worker_argv) {
    pid_t self = getpid();
    char exe[4096];
    ssize_t length = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (length < 0) {
        perror("holder: readlink /proc/self/exe");
        return 1;
    }
    exe[length] = '\0';

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGHUP, &action, NULL);

    pid_t child = fork();
    if (child < 0) {
        perror("holder: fork");
        return 1;
    }
    if (child == 0) {
        die_with_parent(self);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execv(exe, worker_argv);
        perror("holder: execv");
        _exit(127);
    }
    worker_pid = child;
    printf("%d\n", (int)child);
    fflush(stdout);

    int status;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("holder: waitpid");
            return 1;
        }
    }
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    return 128 + WTERMSIG(status);
}

static int run_idle(long count) {
    pid_t self = getpid();
    for (long i = 0; i < count; i++) {
        fflush(stdout); /* so that no child inherits buffered pids */
        pid_t child = fork();
        if (child < 0) {
            perror("holder: fork");
            return 1;
        }
        if (child == 0) {
            die_with_parent(self);
            close(STDOUT_FILENO); /* the reader sees end of file when the parent exits */
            for (;;) {
                pause();
            }
        }
        printf("%d\n", (int)child);
    }
    fflush(stdout);
    close(STDOUT_FILENO);
    while (wait(NULL) > 0 || errno == EINTR) {
    }
    return 0;
}

static double monotonic_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e3 + now.tv_nsec / 1e6;
}

static void reap_exited(long *running) {
    while (*running > 0 && waitpid(-1, NULL, WNOHANG) > 0) {
        (*running)--;
    }
}

static int run_storm(long count, long period_ms, int with_exec, const char *exe) {
    double started = monotonic_ms();
    long running = 0;
    long forked = 0;
    for (long i = 0; i < count; i++) {
        double due = started + (double)period_ms * i / count;
        double ahead = due - monotonic_ms();
        if (ahead > 0) {
            struct timespec delay = {(time_t)(ahead / 1e3), (long)((ahead - (long)(ahead / 1e3) * 1e3) * 1e6)};
            nanosleep(&delay, NULL);
        }
        pid_t child = fork();
        if (child < 0) {
            if (errno == EAGAIN) {
                reap_exited(&running);
                continue;
            }
            perror("holder: fork");
            break;
        }
        if (child == 0) {
            if (with_exec) {
                execl(exe, "java", "exit", (char *)NULL);
                _exit(127);
            }
            _exit(0);
        }
        running++;
        forked++;
        reap_exited(&running);
    }
    while (running > 0 && (wait(NULL) > 0 || errno == EINTR)) {
        running--;
    }
    printf("%ld %.1f\n", forked, monotonic_ms() - started);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "exit") == 0) {
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "storm") == 0) {
        int with_exec = argc >= 5 && strcmp(argv[4], "exec") == 0;
        char exe[4096];
        ssize_t length = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (length < 0) {
            perror("holder: readlink /proc/self/exe");
            return 1;
        }
        exe[length] = '\0';
        return run_storm(strtol(argv[2], NULL, 10), strtol(argv[3], NULL, 10), with_exec, exe);
    }
    if (argc >= 3 && strcmp(argv[1], "idle") == 0) {
        return run_idle(strtol(argv[2], NULL, 10));
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], LOGWRITER_CLASS) == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "holder: no worker argv after %s\n", LOGWRITER_CLASS);
                return 2;
            }
            return run_logwriter(argv + i + 1);
        }
    }
    return run_worker();
}
