#include "common/pluginLogging.h"

#include <atomic>
#include <cstdio>

namespace dflash
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    gLoggerFinder.store(finder);
}

void logError(std::string const& message)
{
    nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
    nvinfer1::ILogger* const logger = finder == nullptr ? nullptr : finder->findLogger();
    std::string const text = std::string("[dflash_trt] ") + message;
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
    }
    else
    {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}

} // namespace dflash
